"""Defaults that name a file the project ships: the working folder's own copy first, else the project's, so
that a step runs from any folder."""
import os

import scratch
import tester
from conftest import REPO


def test_shipped_defaults_are_the_projects_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert scratch.parse_args([]).architecture == os.path.join(REPO, "architecture_final.json")
    assert tester.parse_args([]).search_config == os.path.join(REPO, "config_search.yml")


def test_shipped_defaults_are_the_working_folders_own_when_it_has_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "architecture_final.json").write_text("[0]")
    (tmp_path / "config_search.yml").write_text("")
    assert scratch.parse_args([]).architecture == "architecture_final.json"
    assert tester.parse_args([]).search_config == "config_search.yml"


def test_a_named_file_is_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no fallback for a file the user names: a missing one is an error later
    assert scratch.parse_args(["--fixed-arc", "architecture_final.json"]).architecture == "architecture_final.json"
    assert tester.parse_args(["--search-config", "mine.yml"]).search_config == "mine.yml"
