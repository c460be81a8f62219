"""The README's quickstart is exactly two commands, and every result table it shows is a copy of
a file merlib wrote (between `<!-- from: PATH -->` and `<!-- end -->`), never typed in."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_is_exactly_the_two_commands():
    quick = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    assert block.strip().splitlines() == ["make reproduce", "make test"]


def test_result_tables_in_the_readme_are_the_files_merlib_wrote():
    blocks = re.findall(r"<!-- from: (\S+) -->\n(.*?)<!-- end -->", README, re.S)
    assert blocks, "the README shows no generated table"
    for path, text in blocks:
        assert (ROOT / path).read_text().strip() == text.strip(), f"README differs from {path}"


def test_images_in_the_readme_exist():
    for path in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / path).is_file(), path
