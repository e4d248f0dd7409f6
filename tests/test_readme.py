"""The README's runnable Python snippets (the ones after a `<!-- readme-test: runs -->` line) run as written
(lucidrains' test_readme idiom), so the docs cannot rot. The other snippets are fragments over names they do not
define; they are compiled, so a syntax error in them fails too."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme-test: runs -->"


def blocks():
    """(runnable?, code) of every ```python block."""
    return [(bool(mark), code) for mark, code in
            re.findall(r"(" + re.escape(MARK) + r"\n)?```python\n(.*?)```", README.read_text(), flags=re.S)]


def test_readme_snippets_compile():
    found = blocks()
    assert any(run for run, _ in found), "README.md lost its runnable Python example"
    for i, (_, code) in enumerate(found):
        compile(code, f"README.md python block {i + 1}", "exec")


def test_readme_runnable_snippets_run(spark, tmp_path):
    # the snippets write under /tmp/sid_readme: this test's folder instead
    for i, (run, code) in enumerate(blocks()):
        if run:
            exec(compile(code.replace("/tmp/sid_readme", str(tmp_path)), f"README.md python block {i + 1}", "exec"),
                 {"__name__": f"readme_{i}"})
