"""The house flows one way: jobs -> commands -> API -> execution -> math. Checked on the import statements (module
level and inside functions), so a shortcut cannot creep back in unnoticed."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sid_spark"
# the API layer and above: what a user imports, and the commands over it
API = {"sid_spark.tokenizer", "sid_spark.encoder_tokenizer", "sid_spark.compare", "sid_spark.cli",
       "sid_spark.ml_params", "sid_spark.commands"}
LOWER = ["spark", "metrics", "kernels", "retrieval", "encoders"]


def imported_modules(path: Path):
    module = "sid_spark." + ".".join(path.relative_to(PKG).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{a.name}" for a in node.names)


def _is_api(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in API)


@pytest.mark.parametrize("layer", LOWER)
def test_no_api_object_below_the_api_layer(layer):
    bad = [(str(p.relative_to(PKG)), name) for p in sorted((PKG / layer).rglob("*.py"))
           for name in imported_modules(p) if _is_api(name)]
    assert not bad, f"{layer} imports the API layer: {bad}"


def test_math_layers_do_not_import_spark():
    for layer in ("kernels",):
        bad = [(str(p.relative_to(PKG)), n) for p in sorted((PKG / layer).rglob("*.py")) for n in imported_modules(p)
               if n.startswith("pyspark") or n.startswith("sid_spark.spark")]
        assert not bad, bad


def test_commands_do_not_import_each_other():
    cmds = sorted((PKG / "commands").glob("*.py"))
    edges = {(p.stem, n.split(".")[2]) for p in cmds for n in imported_modules(p)
             if n.startswith("sid_spark.commands.") and n.split(".")[2] != p.stem}
    cycles = {(a, b) for a, b in edges if (b, a) in edges}
    assert not cycles, f"commands importing each other: {sorted(cycles)}"
