"""Issue 15's findings against the command line, one test (or group) per finding.

Data loss: the writer removes only what its manifest proves it wrote. Matrix text: it reaches the
generated code only as escaped literals, and verification imports what it verified. Not atomic:
a signal at each write phase leaves --out fully old or fully new, with a message that says which.
Tracebacks: every OS failure and every unusable --out is exit 2 with one line. Scale and streams:
capped diagnostics, the matrix read once, a size limit.
"""

from __future__ import annotations

import ast
import importlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from generator import cli, pipeline, render
from tests.generator.cli_run import generate, run, tree_digest
from tests.generator.malformed.expected import BASE_MATRIX

REPO = Path(__file__).resolve().parents[2]
AMD = REPO / "schema" / "amd.yaml"
MARK = "@" + "generated"
BASE = yaml.safe_load(BASE_MATRIX.read_text())
# Spelled out, not imported, so that this file also runs against the code before issue 15.
MANIFEST_NAME = "manifest.sha256"
PAUSE_ENV = "GENERATOR_TEST_PAUSE_AT"
PROBLEM_LIMIT = 50


def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}.generator-new"


def _matrix(tmp_path: Path, name: str = "m.yaml", **changes: object) -> Path:
    """The base matrix with top-level sections replaced, dumped so any text is valid YAML."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**BASE, **changes}, allow_unicode=True, sort_keys=False))
    return path


# -- data loss ----------------------------------------------------------------------------------


def test_lock_files_marked_generated_beside_the_output_survive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    generate(BASE_MATRIX, out, capsys)
    locks = {
        "poetry.lock": f"# This file is automatically {MARK} by Poetry 1.8.\n",
        "Cargo.lock": f"# This file is automatically {MARK} by Cargo.\n",
    }
    for name, text in locks.items():
        (out / name).write_text(text)
    code, _, err = run("--matrix", BASE_MATRIX, "--out", out, "--check", capsys=capsys)
    assert code == 0, err
    assert "orphaned" not in err
    assert f"foreign: {out / 'Cargo.lock'}" in err and f"foreign: {out / 'poetry.lock'}" in err
    generate(_matrix(tmp_path, exclusions=[]), out, capsys)  # a write that changes things
    for name, text in locks.items():
        assert (out / name).read_text() == text


def test_out_at_a_repository_root_deletes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old writer deleted every `@generated` file under --out: all of generated/."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "generated", project / "generated")
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / ".git").mkdir()
    (project / "poetry.lock").write_text(f"# {MARK} by Poetry\n")
    before = tree_digest(project, ignore={"__pycache__"})
    for mode in ((), ("--check",)):
        code, out, err = run(
            "--matrix", AMD, "--out", project, "--no-typecheck", *mode, capsys=capsys
        )
        assert code == 2, err
        assert err.count("\n") == 1 and "no generated package" in err and str(project) in err
        assert "Traceback" not in err and out == ""
    assert tree_digest(project, ignore={"__pycache__"}) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


def test_the_real_repository_root_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run("--matrix", AMD, "--out", REPO, "--check", capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err


def test_a_nested_file_with_the_exact_header_survives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    generate(BASE_MATRIX, out, capsys)
    nested = out / "vendored" / "none__unquant__standard.py"
    nested.parent.mkdir()
    shutil.copy(out / "none__unquant__standard.py", nested)
    text = nested.read_bytes()
    generate(_matrix(tmp_path, exclusions=[]), out, capsys)
    assert nested.read_bytes() == text


def test_a_dropped_combination_is_removed_and_reported_as_orphaned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The positive control of the three above: a module of the last run that the matrix no
    longer produces is provably ours and goes."""
    out = tmp_path / "gen"
    generate(_matrix(tmp_path, exclusions=[]), out, capsys)
    assert (out / "deepep__fp8_block__deepep_ll.py").is_file()
    code, _, err = run("--matrix", BASE_MATRIX, "--out", out, "--check", capsys=capsys)
    assert code == 1 and "orphaned: " in err and "deepep__fp8_block__deepep_ll.py" in err
    code, stdout, _ = run("--matrix", BASE_MATRIX, "--out", out, "--no-typecheck", capsys=capsys)
    assert code == 0 and "1 removed" in stdout
    assert not (out / "deepep__fp8_block__deepep_ll.py").exists()


# -- matrix text is never code ------------------------------------------------------------------

SENTINEL = "sentinel-created"
# Each would run if pasted: it closes a docstring, a string or a comment, or is an f-string field.
PAYLOADS = (
    f'""" + __import__("pathlib").Path("{SENTINEL}").touch() + """',
    f"{{__import__('pathlib').Path('{SENTINEL}').touch()}}",
    f"\nimport pathlib; pathlib.Path('{SENTINEL}').touch()\n#",
    f"'\nimport pathlib; pathlib.Path('{SENTINEL}').touch()\n'",
    'ends with a quote"',
    "ends with a backslash\\",
    "\\N{BULLET} and \\x41 are not escapes here",
)


def _hostile_matrix(tmp_path: Path) -> Path:
    formats = {name: dict(entry) for name, entry in BASE["dispatch_formats"].items()}
    backends = {name: dict(entry) for name, entry in BASE["a2a_backends"].items()}
    quants = {name: dict(entry) for name, entry in BASE["quant_methods"].items()}
    for index, entry in enumerate([*formats.values(), *backends.values(), *quants.values()]):
        entry["description"] = PAYLOADS[index % len(PAYLOADS)]
    exclusion = dict(BASE["exclusions"][0], reason=PAYLOADS[1] + PAYLOADS[0])
    # The path itself is matrix text too: it lands in headers and in __init__.py.
    name = f"m{{__import__('pathlib').Path('{SENTINEL}').touch()}}.yaml"
    return _matrix(
        tmp_path,
        name,
        a2a_backends=backends,
        dispatch_formats=formats,
        quant_methods=quants,
        exclusions=[exclusion],
    )


def test_hostile_matrix_text_is_verified_importable_and_never_runs(tmp_path: Path) -> None:
    """End to end, with mypy and the import check: exit 0 must mean importable."""
    matrix = _hostile_matrix(tmp_path)
    out = tmp_path / "gen_hostile"
    # The matrix's directory is the working directory; PYTHONPATH picks this checkout's generator.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "generator", "--matrix", matrix.name, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified in" in done.stdout
    probe = f"""
import sys
sys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]
import gen_hostile
for key in gen_hostile.RUNNERS:
    gen_hostile.select(*key)
for key in [*gen_hostile.EXCLUDED, ("no", "such", "key")]:
    try:
        gen_hostile.select(*key)
    except gen_hostile.UnsupportedCombination as error:
        print(repr(str(error)))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    excluded, unknown = (ast.literal_eval(line) for line in done.stdout.splitlines())
    assert f"is excluded by {matrix.name}: {PAYLOADS[1] + PAYLOADS[0]};" in excluded
    assert f"is not in {matrix.name};" in unknown
    assert not (tmp_path / SENTINEL).exists()


def test_a_docstring_that_closes_early_fails_compile_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Negative control of the escaping: without the docstring filter the same matrix is caught
    by the compile step (exit 3), never written as "verified"."""
    monkeypatch.setattr(render, "docstring_text", lambda text: text)
    formats = {name: dict(entry) for name, entry in BASE["dispatch_formats"].items()}
    formats["standard"]["description"] = 'closes """ early'
    out = tmp_path / "gen_unescaped"
    matrix = _matrix(tmp_path, dispatch_formats=formats)
    code, _, err = run("--matrix", matrix, "--out", out, capsys=capsys)
    assert code == 3, err
    assert "compile failed" in err and "none__fp8_block__standard.py:" in err
    assert not out.exists()


def test_a_name_with_a_trailing_newline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backends = dict(BASE["a2a_backends"])
    backends["abc\n"] = backends.pop("none")
    matrix = _matrix(tmp_path, a2a_backends=backends)
    code, _, err = run("--matrix", matrix, "--list", capsys=capsys)
    assert code == 2
    assert "a2a_backends: invalid name 'abc\n'" in err


# -- atomic switch, interrupts ------------------------------------------------------------------


def _new_matrix(tmp_path: Path) -> Path:
    """The base matrix minus deepep_ll, every description changed: every module changes and one
    goes, so a half-done switch would show."""
    formats = {k: dict(v) for k, v in BASE["dispatch_formats"].items() if k != "deepep_ll"}
    backends = {k: dict(v) for k, v in BASE["a2a_backends"].items()}
    backends["deepep"]["formats"] = ["deepep_normal"]
    for entry in formats.values():
        entry["description"] = entry["description"] + " Changed."
    return _matrix(tmp_path, "new.yaml", a2a_backends=backends, dispatch_formats=formats,
                   exclusions=[])  # fmt: skip


@pytest.fixture(scope="module")
def trees(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, dict[str, str], dict[str, str]]:
    """The two matrices and the trees they produce."""
    root = tmp_path_factory.mktemp("trees")
    new = _new_matrix(root)
    digests = []
    for matrix, name in ((BASE_MATRIX, "old"), (new, "new")):
        out = root / name / "gen"
        assert cli.main(["--matrix", str(matrix), "--out", str(out), "--no-typecheck"]) == 0
        digests.append(tree_digest(out, ignore={"__pycache__"}))
    assert digests[0] != digests[1]
    assert (pipeline.PAUSE_ENV, cli.PROBLEM_LIMIT) == (PAUSE_ENV, PROBLEM_LIMIT)
    return BASE_MATRIX, new, digests[0], digests[1]


@pytest.mark.parametrize("phase", ["staging", "staged", "committed"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_at_each_write_phase_leaves_old_or_new_and_says_which(
    tmp_path: Path,
    trees: tuple[Path, Path, dict[str, str], dict[str, str]],
    phase: str,
    signum: int,
) -> None:
    old_matrix, new_matrix, old, new = trees
    out = tmp_path / "gen"
    assert cli.main(["--matrix", str(old_matrix), "--out", str(out), "--no-typecheck"]) == 0
    assert tree_digest(out, ignore={"__pycache__"}) == old
    command = [sys.executable, "-m", "generator", "--matrix", str(new_matrix), "--out", str(out)]
    env = {**os.environ, PAUSE_ENV: phase, "GENERATOR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [*command, "--no-typecheck"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == f"paused at {phase}\n"
        proc.send_signal(signum)
        returncode = proc.wait(timeout=60)
        message = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    switched = phase == "committed"
    assert tree_digest(out, ignore={"__pycache__"}) == (new if switched else old)
    if signum == signal.SIGKILL:
        assert returncode == -signal.SIGKILL
        # A rerun finishes the job and removes what the killed run left beside --out.
        # (Without the pause hook: with it, the rerun would sit out its 60 s pause.)
        rerun_env = {name: value for name, value in env.items() if name != PAUSE_ENV}
        done = subprocess.run([*command, "--no-typecheck"], cwd=REPO, env=rerun_env, timeout=120)
        assert done.returncode == 0
        assert tree_digest(out, ignore={"__pycache__"}) == new
    else:
        assert returncode == 128 + signum
        expected = "holds the complete new tree\n" if switched else "nothing under --out changed\n"
        assert message.endswith(expected), message
        assert "Traceback" not in message
    assert not staging_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "gen"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# -- OS failures and unusable --out: exit 2, one line ------------------------------------------


def _one_line_exit_2(args: list[str | Path], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run("--matrix", BASE_MATRIX, *args, "--no-typecheck", capsys=capsys)
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("python -m generator: error: "), err
    return err


def test_out_that_is_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gen").write_text("mine")
    err = _one_line_exit_2(["--out", tmp_path / "gen"], capsys)
    assert "is a file, not a directory" in err
    assert (tmp_path / "gen").read_text() == "mine"


def test_out_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("mine")
    err = _one_line_exit_2(["--out", tmp_path / "file" / "gen"], capsys)
    assert f"{tmp_path / 'file'} is not a directory" in err


def test_out_in_proc(capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_exit_2(["--out", "/proc"], capsys)
    assert "/proc" in err and ("no generated package" in err or "not writable" in err)


def test_out_a_dangling_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gen").symlink_to(tmp_path / "nowhere")
    err = _one_line_exit_2(["--out", tmp_path / "gen"], capsys)
    assert "symbolic link" in err and "does not exist" in err
    assert not (tmp_path / "nowhere").exists()


def test_out_an_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An immutable directory (chattr +i; as root nothing else stops a write): the old writer
    raised a traceback and left a partial update."""
    out = tmp_path / "gen"
    generate(BASE_MATRIX, out, capsys)
    before = tree_digest(out, ignore={"__pycache__"})
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not permitted in this environment")
        undo = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        undo = ["chmod", "755", str(out)]
    try:
        code, _, err = run(
            "--matrix", _new_matrix(tmp_path), "--out", out, "--no-typecheck", capsys=capsys
        )
    finally:
        subprocess.run(undo, check=True)
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and str(out) in err
    assert "not permitted" in err or "not writable" in err
    assert tree_digest(out, ignore={"__pycache__"}) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "new.yaml"]


def test_an_unusable_cache_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache").write_text("a file")
    monkeypatch.setenv("GENERATOR_CACHE_DIR", str(tmp_path / "cache"))
    err = _one_line_exit_2(["--out", tmp_path / "gen"], capsys)
    assert "GENERATOR_CACHE_DIR" in err and str(tmp_path / "cache") in err
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("name", ["my-gen", "1gen", "class", "gen.v2"])
def test_out_names_that_do_not_import(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_line_exit_2(["--out", tmp_path / name], capsys)
    assert "cannot be imported as a package" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["torch", "jinja2", "yaml", "libcst", "mypy", "moe_runtime", "generator", "os"]
)
def test_out_names_that_shadow_a_dependency(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_line_exit_2(["--out", tmp_path / name], capsys)
    assert f"a package named {name!r} would shadow" in err
    assert list(tmp_path.iterdir()) == []


# -- scale and streams --------------------------------------------------------------------------


def test_duplicate_exclusions_give_capped_linear_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 400
    # Distinct dicts: the same dict repeated would be dumped as one anchored node.
    matrix = _matrix(tmp_path, exclusions=[dict(BASE["exclusions"][0]) for _ in range(count)])
    code, _, err = run("--matrix", matrix, "--list", capsys=capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == PROBLEM_LIMIT + 2
    assert lines[-2] == f"... and {count - 1 - PROBLEM_LIMIT} more errors"
    assert lines[-1] == f"{count - 1} errors; nothing written"
    # Each names the one exclusion that shadows it, not every earlier copy.
    first_line = matrix.read_text().splitlines().index("exclusions:") + 2
    assert "&" not in matrix.read_text()
    assert all(line.endswith(f"at line(s) {first_line}") for line in lines[:-2]), lines[:3]


def test_headers_hash_the_matrix_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from generator.combinations import enumerate_combinations, excluded_combinations
    from generator.loader import load_matrix
    from generator.plan import plan_combination

    matrix = load_matrix(AMD)
    data = AMD.read_bytes()
    fed: list[int] = []
    real = render.hashlib.sha256

    class Counting:
        def __init__(self) -> None:
            self.inner = real()

        def update(self, chunk: bytes) -> None:
            if chunk == data:
                fed.append(len(chunk))
            self.inner.update(chunk)

        def copy(self) -> object:
            return self.inner.copy()

    monkeypatch.setattr(render.hashlib, "sha256", Counting)
    plans = [plan_combination(matrix, c) for c in enumerate_combinations(matrix)]
    files = render.render_all(plans, excluded_combinations(matrix), render.Inputs("m", data))
    assert len(files) == len(plans) + 3  # __init__.py, FEATURES.md, py.typed
    assert fed == [len(data)]


def test_a_fifo_matrix_is_read_once(tmp_path: Path) -> None:
    fifo = tmp_path / "matrix.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "gen"
    text = BASE_MATRIX.read_bytes()

    def feed() -> None:
        with open(fifo, "wb") as stream:  # blocks until the generator opens it
            stream.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    done = subprocess.run(
        [sys.executable, "-m", "generator", "--matrix", str(fifo), "--out", str(out), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    writer.join(10)
    assert not writer.is_alive()
    assert done.returncode == 1, done.stderr  # everything missing: read, planned, compared
    assert f"missing: {out / '__init__.py'}" in done.stderr


def test_an_endless_matrix_is_cut_off() -> None:
    """In a subprocess with its address space capped: reading /dev/zero to the end would take
    every byte of memory the machine has before it fails."""
    limit = 2 << 30
    done = subprocess.run(
        [sys.executable, "-m", "generator", "--matrix", "/dev/zero", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[0] == (
        "/dev/zero:1:1: error: cannot read the matrix: it is larger than 32 MiB (tried /dev/zero)"
    )


# -- small things (issue 8, item 5) -------------------------------------------------------------


def test_a_missing_matrix_names_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("--matrix", "missing.yaml", "--list", capsys=capsys)
    assert code == 2
    assert f"(tried {tmp_path / 'missing.yaml'})" in err


def test_list_says_when_there_are_no_exclusions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run("--matrix", _matrix(tmp_path, exclusions=[]), "--list", capsys=capsys)
    assert code == 0 and out.splitlines()[-1] == "no exclusions"
    code, out, _ = run("--matrix", BASE_MATRIX, "--list", capsys=capsys)
    assert code == 0 and "no exclusions" not in out and "1 excluded:" in out


def test_the_count_line_adds_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    code, stdout, _ = run("--matrix", BASE_MATRIX, "--out", out, "--no-typecheck", capsys=capsys)
    assert code == 0
    assert stdout.startswith(
        f"{out}: 5 runner modules, __init__.py, FEATURES.md, py.typed and {MANIFEST_NAME}: "
        "9 added, 0 updated, 0 unchanged, 0 removed; verified"
    )
    assert len(list(out.iterdir())) == 9
    code, stdout, _ = run("--matrix", BASE_MATRIX, "--out", out, "--no-typecheck", capsys=capsys)
    assert "0 added, 0 updated, 9 unchanged, 0 removed" in stdout


def test_select_takes_the_explain_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen_select"
    generate(BASE_MATRIX, out, capsys)
    sys.path.insert(0, str(tmp_path))
    try:
        package = importlib.import_module(out.name)
        runner = package.select("deepep/unquant/deepep_ll")
        assert runner is package.select("deepep", "unquant", "deepep_ll")
        with pytest.raises(package.UnsupportedCombination, match="An example exclusion"):
            package.select("deepep/fp8_block/deepep_ll")
        with pytest.raises(ValueError, match="'a2a/quant/dispatch' or three names"):
            package.select("deepep/unquant")
        with pytest.raises(TypeError):
            package.select("deepep", "unquant")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == out.name or n.startswith(out.name + ".")]:
            del sys.modules[name]
