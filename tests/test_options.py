"""spos/options.py: a dataset's recipe.json gives the defaults of the flags the command line leaves out; defaults that
name a file the project ships are the working folder's own copy first, else the project's."""
import argparse
import json
import os

import pytest
from conftest import REPO

import scratch
from spos.options import add_data_arguments, add_optimisation_arguments, parse_args_with_recipe
from utils import UserError


def parser():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, workers=4)
    group = add_optimisation_arguments(parser, batch_size=768, epochs=120)
    group.add_argument("--resume", action="store_true")
    group.add_argument("--warm-start-steps", type=int, default=0)
    return parser


def write_recipe(folder, recipe):
    (folder / "recipe.json").write_text(json.dumps(recipe))


def test_without_a_recipe_the_defaults_are_megvii_s(tmp_path):
    args = parse_args_with_recipe(parser(), ["--imagenet-dir", str(tmp_path)], "supernet.py")
    assert (args.batch_size, args.epochs, args.learning_rate, args.recipe) == (768, 120, 0.5, None)


def test_the_recipe_sets_what_the_command_line_leaves_out(tmp_path):
    write_recipe(tmp_path, {"supernet.py": {"batch_size": 64, "epochs": 20, "learning_rate": 1, "input_size": 32,
                                            "warm_start_steps": 300},
                            "scratch.py": {"epochs": 10}})
    args = parse_args_with_recipe(parser(), ["--imagenet-dir", str(tmp_path), "--epochs", "3"], "supernet.py")
    assert (args.batch_size, args.epochs, args.learning_rate, args.input_size, args.warm_start_steps) == \
        (64, 3, 1, 32, 300)
    assert args.recipe == str(tmp_path / "recipe.json")
    other = parse_args_with_recipe(parser(), ["--imagenet-dir", str(tmp_path)], "tester.py")
    assert (other.batch_size, other.recipe) == (768, None)  # no section for it


@pytest.mark.parametrize("recipe, message", [
    ({"supernet.py": {"batch_sise": 64}}, "'batch_sise' is not a flag a recipe can set"),
    ({"supernet.py": {"resume": True}}, "'resume' is not a flag a recipe can set"),
    ({"supernet.py": {"batch_size": "64"}}, "batch_size must be an integer, got '64'"),
    ({"supernet.py": {"batch_size": 6.4}}, "batch_size must be an integer"),
    ({"supernet.py": {"spos_preprocessing": 1}}, "spos_preprocessing must be true or false"),
    ({"supernet.py": {"loader": "opencv"}}, "loader must be one of"),
    ({"supernet.py": [1, 2]}, "expected an object of per-script objects"),
])
def test_a_bad_recipe_is_one_clear_message(tmp_path, recipe, message):
    write_recipe(tmp_path, recipe)
    with pytest.raises(UserError, match=message) as error:
        parse_args_with_recipe(parser(), ["--imagenet-dir", str(tmp_path)], "supernet.py")
    assert str(tmp_path / "recipe.json") in str(error.value)


def test_a_recipe_that_is_not_json_is_named(tmp_path):
    (tmp_path / "recipe.json").write_text("{batch_size: 64")
    with pytest.raises(UserError, match="recipe.json: not readable JSON"):
        parse_args_with_recipe(parser(), ["--imagenet-dir", str(tmp_path)], "supernet.py")


def test_shipped_defaults_are_the_projects_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert scratch.parse_args([]).architecture == os.path.join(REPO, "architecture_final.json")


def test_shipped_defaults_are_the_working_folders_own_when_it_has_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "architecture_final.json").write_text("[0]")
    assert scratch.parse_args([]).architecture == "architecture_final.json"


def test_a_named_file_is_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no fallback for a file the user names: a missing one is an error later
    assert scratch.parse_args(["--fixed-arc", "architecture_final.json"]).architecture == "architecture_final.json"


def test_a_recipe_sets_a_list_flag_with_a_list_of_its_type(tmp_path):
    budgets = argparse.ArgumentParser()
    budgets.add_argument("--imagenet-dir")
    budgets.add_argument("--epochs", type=int, nargs="+", default=[1, 4])
    data = ["--imagenet-dir", str(tmp_path)]
    write_recipe(tmp_path, {"budget": {"epochs": [2, 8]}})
    assert parse_args_with_recipe(budgets, data, "budget").epochs == [2, 8]
    assert parse_args_with_recipe(budgets, [*data, "--epochs", "3", "12"], "budget").epochs == [3, 12]
    for wrong in (2, [2, "8"], []):
        write_recipe(tmp_path, {"budget": {"epochs": wrong}})
        with pytest.raises(UserError, match=r"budget: epochs must be a list of integers, got "):
            parse_args_with_recipe(budgets, data, "budget")
