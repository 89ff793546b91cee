"""What the benchmarks share: a Markdown table, and the text printed and written to ``--output``."""


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def emit(text, output=None):
    """Print ``text`` and, when ``output`` names a file, write it there too."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if output:
        with open(output, "w") as f:
            f.write(text)
