"""README as a newcomer reads it: its examples return what it says, its snippets run, its paths exist."""

import ast
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.helpers import REPO, Server

README = (REPO / "README.md").read_text()
# `curl -s localhost:8000/PATH -H 'content-type: application/json' [\] -d '<json>'` then `# -> <json>`
CURL = re.compile(r"curl -s localhost:8000(/\S+) -H 'content-type: application/json' \\?\s*-d '((?s:.*?))'\n# -> (.*)")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


@pytest.fixture(scope="module")
def demo():
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    server = Server(env=environment, cwd=REPO).wait_ready()  # README command 1: `prm serve`, no options
    yield server
    server.stop()


def approximately(expected):
    """README's numbers are rounded to 3 significant digits."""
    if isinstance(expected, float):
        return pytest.approx(expected, rel=5e-3)
    if isinstance(expected, list):
        return [approximately(value) for value in expected]
    if isinstance(expected, dict):
        return {key: approximately(value) for key, value in expected.items()}
    return expected


EXAMPLES = [match for block in code_blocks("bash") for match in CURL.findall(block)]


def test_the_readme_has_its_curl_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("path", "body", "expected"), EXAMPLES, ids=[f"{i}{e[0]}" for i, e in enumerate(EXAMPLES)])
def test_each_curl_example_returns_what_the_readme_says(demo, path, body, expected):
    response = httpx.post(f"{demo.url}{path}", json=json.loads(body), timeout=30)
    assert response.status_code == 200, response.text
    expected = json.loads(expected)
    shown = {key: value for key, value in response.json().items() if key not in ("id", "created")}  # vary per call
    assert shown == approximately(expected)


def test_the_miscalculation_example_quotes_its_exact_steps_and_numbers(demo):
    text = " ".join(README.split())
    quoted = re.search(r'A miscalculation, `"(.*?)"` with `"(.*?)"`, scores \[(.*?)\]', text)
    first = json.loads(EXAMPLES[0][1])
    steps = [first["steps"][0], *(json.loads(f'"{step}"') for step in quoted.groups()[:2])]
    scores = httpx.post(f"{demo.url}/score_steps", json={**first, "steps": steps}, timeout=30).json()["step_scores"]
    assert scores == approximately([float(x) for x in quoted.group(3).split(", ")])


def test_the_python_client_snippet_runs_as_pasted(demo):
    snippet = next(block for block in code_blocks("python") if "PRMClient(" in block and "print(" in block)
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace("http://127.0.0.1:8000", demo.url)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, batch, ranked = result.stdout.splitlines()
    assert json.loads(first) == approximately([0.974, 0.947])
    assert len(ast.literal_eval(batch)) == 2
    assert ast.literal_eval(ranked)[0]["index"] == 1  # the right solution first


def test_quickstart_installs_cpu_torch_as_its_own_command():
    quickstart = README.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert quickstart.splitlines()[0].startswith("pip install torch==2.13.0")


def test_every_local_path_in_the_readmes_commands_exists():
    commands = "\n".join(code_blocks("bash"))
    paths = set(re.findall(r"(?:tests/fixtures|scripts|model_store|loadtest|deploy)/[\w./-]+", commands))
    assert paths, "no local paths found"
    assert [path for path in paths if not (REPO / path).exists()] == []
    assert re.findall(r"(?<![\w/.$-])data/\S+", commands) == []  # no path a clone does not have


def test_the_demo_build_history_lives_beside_the_store_not_in_the_readme():
    assert "How the build got here" not in README
    assert "How the build got here" in (REPO / "model_store" / "README.md").read_text()
