"""The docs and shipped configs cannot rot: they are checked against the code."""
import re
from pathlib import Path

import yaml

from sid_spark.config import TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]


def test_conf_tokenizer_yaml_lists_every_key_with_its_default():
    assert yaml.safe_load((ROOT / "conf" / "tokenizer.yaml").read_text()) == TokenizerConfig().to_dict()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "make test" in readme and "make demo" in readme


def test_readme_config_table_names_real_keys():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Configuration keys", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, re.M)
    named = {name for cell in first_cells for name in re.findall(r"`([a-z_]+)`", cell)}
    assert named and named <= set(TokenizerConfig().to_dict())
