"""The README's configuration table is the one generated from the chart's schema."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from values_table import readme_with_table  # noqa: E402


def test_the_readme_configuration_table_matches_the_values_schema():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme), "run `python scripts/values_table.py --write`"


def test_the_readme_names_the_commands_that_ci_and_users_run():
    readme = (ROOT / "README.md").read_text()
    assert "make sandbox\n" in readme and "make test\n" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
