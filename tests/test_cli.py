"""The command line as scripts use it: --version, -v anywhere, --json, `ls runs` columns and filters,
`--set` lists, `report`'s output, file modes under the umask, `peftlab init`, and a quiet terminal."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from peftlab.cli import build_parser, main

TESTS_DIR = Path(__file__).resolve().parent


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ a fake store
EXPERIMENT = {
    "name": "cmp", "model": "smollm2-135m-instruct",
    "task": {"lm": {"limit_train": 8, "limit_eval": 4, "max_length": 32}},
    "methods": ["base", "lora", "prompt"], "seeds": [0],
    "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0},
    "grid": {"lora.r": [4, 8]},
}


def runs_of(path: Path, sets: list[str] | None = None):
    from peftlab.config import load_experiment
    from peftlab.plan import expand

    return expand(load_experiment(path, None, sets or []))


def result_for(rc, status: str = "ok", value: float = 20.0, started: int = 0, **extra) -> dict:
    """A result as the runner writes it: resolved method arguments and training settings."""
    from peftlab.methods import get_method

    return {"run_id": rc.run_id(), "experiment": rc.experiment, "sweep_id": None, "status": status,
            "label": rc.method.label, "method": rc.method.method,
            "method_args": get_method(rc.method.method).resolve_args(rc.method.args),
            "task": rc.task.name, "seed": rc.seed, "model": rc.model.name, "grid": dict(rc.grid),
            "train": dataclasses.asdict(rc.train), "metrics": {"perplexity": value},
            "metric_directions": {"perplexity": "lower"}, "primary_metric": "perplexity",
            "cost": {"trainable_pct": 0.5, "tokens_per_s": 1000.0, "peak_memory_bytes": 2**30},
            "error": None, "started_at": f"2026-01-01T00:00:{started:02d}+00:00",
            "finished_at": "2026-01-01T00:01:00+00:00", **extra}


@pytest.fixture
def store(tmp_path):
    """base, lora r=4/8 (a grid), prompt; then lora r=8 again with another learning rate (`--set`),
    a failed prompt run with another number of virtual tokens, and a run of a second experiment."""
    from peftlab.store import Store

    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    store = Store(tmp_path / "store")
    runs = runs_of(path)
    extra = runs_of(path, ["method=lora", "grid.lora.r=8", "train.lr=1e-4"])
    failed = runs_of(path, ["method=prompt", "grid={}", "prompt.num_virtual_tokens=4"])
    other = runs_of(path, ["name=other", "method=prompt", "grid={}"])
    written = []
    for i, rc in enumerate(runs + extra + failed + other):
        bad = rc in failed
        store.write_result(result_for(rc, "failed" if bad else "ok", started=i,
                                      error="Traceback ...\nRuntimeError: out of memory" if bad else None))
        store.write_config(rc.run_id(), rc.to_dict())
        written.append(rc)
    return {"root": store.root, "store": store, "path": path, "runs": runs, "extra": extra, "failed": failed,
            "other": other}


# ------------------------------------------------------------------------------------------ version, -v
def test_version_names_the_installed_packages(capsys) -> None:
    from importlib.metadata import version

    code, out, _ = run_main(["--version"], capsys)
    lines = out.splitlines()
    assert code == 0
    assert lines[:4] == [f"{name} {version(name)}" for name in ("peftlab", "torch", "transformers", "peft")]
    assert lines[4] == f"python {sys.version.split()[0]}"


@pytest.mark.parametrize(("argv", "verbose"), [
    (["ls", "runs"], False), (["-v", "ls", "runs"], True), (["ls", "runs", "-v"], True), (["ls", "-v", "runs"], True),
    (["report", "runs", "--verbose"], True), (["data", "show", "lm", "-v"], True),
    (["adapters", "show", "some-run", "-v"], True), (["-v", "validate", "x.yaml"], True),
    (["validate", "x.yaml", "-v"], True), (["init", "--task", "lm", "-v"], True), (["init", "--task", "lm"], False),
])
def test_verbose_goes_before_or_after_the_verb(argv, verbose) -> None:
    assert build_parser().parse_args(argv).verbose is verbose


def test_verbose_after_the_verb_shows_the_traceback(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [lorra]\n")
    code, _, err = run_main(["validate", str(bad)], capsys)
    assert code == 2 and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown method 'lorra'"):
        main(["validate", str(bad), "-v"])


def test_data_prepare_failure_is_one_line_unless_verbose(capsys, monkeypatch) -> None:
    from peftlab.data import offline

    def fail(task, force=False):
        raise RuntimeError("archive checksum mismatch")

    monkeypatch.setattr(offline, "prepare", fail)
    code, _, err = run_main(["data", "prepare", "lm"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "lm: FAILED: RuntimeError: archive checksum mismatch (-v for the traceback)" in err
    code, _, err = run_main(["data", "prepare", "lm", "-v"], capsys)
    assert code == 1 and "Traceback" in err and "archive checksum mismatch" in err


# ------------------------------------------------------------------------------------------ --json
def test_ls_registries_json_is_one_document(capsys) -> None:
    from peftlab.methods import REGISTRY
    from peftlab.models import ALIASES
    from peftlab.tasks.registry import all_tasks

    code, out, _ = run_main(["ls", "methods", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and [m["name"] for m in doc["methods"]] == list(REGISTRY)
    assert "vera" in doc["peft_types"] and "lora" not in doc["peft_types"]
    assert next(m for m in doc["methods"] if m["name"] == "lora")["defaults"]["r"] == REGISTRY["lora"].defaults["r"]
    code, out, _ = run_main(["ls", "tasks", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and [t["name"] for t in doc["tasks"]] == list(all_tasks())
    assert next(t for t in doc["tasks"] if t["name"] == "lm")["splits"] == all_tasks()["lm"].splits
    code, out, _ = run_main(["ls", "models", "--json"], capsys)
    assert code == 0 and [m["alias"] for m in json.loads(out)["models"]] == list(ALIASES)


def test_ls_tasks_prints_splits_as_words(capsys) -> None:
    from peftlab.cli.store import splits_text

    code, out, _ = run_main(["ls", "tasks"], capsys)
    assert code == 0 and "splits: train, validation, test" in out
    assert "{" not in out and "'train'" not in out
    assert splits_text({"train": "train", "test": "validation"}) == "train, test (validation)"


def test_validate_json_lists_every_run_and_errors_stay_json(store, tmp_path, capsys) -> None:
    code, out, err = run_main(["validate", str(store["path"]), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and not err
    assert doc["ok"] is True and doc["runs"] == [rc.run_id() for rc in store["runs"]]
    assert doc["methods"] == ["base", "lora", "prompt"] and doc["grid"] == {"lora.r": [4, 8]}

    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [lorra]\n")
    code, out, err = run_main(["validate", str(bad), "--json"], capsys)
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and doc["error"].startswith("methods: unknown method 'lorra'")
    assert one_error_line(err) == f"error: {doc['error']}"


def test_ls_runs_json(store, capsys) -> None:
    code, out, err = run_main(["ls", "runs", "--store", str(store["root"]), "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and not err
    rows = {r["run_id"]: r for r in doc["runs"]}
    assert len(rows) == 7
    lr_run = rows[store["extra"][0].run_id()]
    assert lr_run["overrides"] == {"method.args.r": 8, "train.lr": 1e-4} and lr_run["grid"] == {"lora.r": 8}
    assert lr_run["primary_value"] == 20.0 and lr_run["metrics"] == {"perplexity": 20.0}
    failed = rows[store["failed"][0].run_id()]
    assert failed["status"] == "failed" and failed["error"].endswith("RuntimeError: out of memory")

    code, out, err = run_main(["ls", "runs", "--store", str(store["root"] / "missing"), "--json"], capsys)
    assert code == 0 and json.loads(out) == {"store": str(store["root"] / "missing"), "runs": []}
    assert "no run store" in err


# ------------------------------------------------------------------------------------------ ls runs
def test_ls_runs_has_a_header_and_the_settings_that_tell_runs_apart(store, capsys) -> None:
    code, out, _ = run_main(["ls", "runs", "--store", str(store["root"])], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["run", "method", "task", "seed", "status", "metric"]
    assert lines[-1] == f"7 run(s) in {store['root']}"
    row = {rc.run_id(): next(line for line in lines if line.startswith(rc.run_id()))
           for rc in store["runs"] + store["extra"] + store["failed"] + store["other"]}
    base, lora4, lora8, prompt = store["runs"]
    assert row[lora4.run_id()].endswith("  r=4 lr=0.0005")  # the grid, and the rate that differs from a sibling
    assert row[lora8.run_id()].endswith("  r=8 lr=0.0005")
    assert row[store["extra"][0].run_id()].endswith("  r=8 lr=0.0001")
    assert row[prompt.run_id()].endswith("  num_virtual_tokens=8")
    assert row[store["failed"][0].run_id()].endswith("  num_virtual_tokens=4")
    assert row[base.run_id()].endswith("  -") and row[store["other"][0].run_id()].endswith("  -")  # no sibling
    assert "perplexity=20" in row[base.run_id()]
    failed_at = lines.index(row[store["failed"][0].run_id()])
    assert lines[failed_at + 1].strip() == "error: RuntimeError: out of memory"


def test_distinguishing_settings_use_the_config_and_full_keys_where_names_clash() -> None:
    from peftlab.cli.display import distinguishing_settings, settings_text

    def result(run_id: str, lr: float) -> dict:
        return {"run_id": run_id, "experiment": "e", "task": "lm", "method": "lora", "seed": 0,
                "method_args": {"r": 8}, "train": {"lr": lr, "batch_size": 8}, "model": "m"}

    results = [result("a", 1e-4), result("b", 1e-4)]
    configs = {"a": {"eval": {"batch_size": 8, "decoding": [{"name": "greedy"}]}, "task": {"limit_eval": 10}},
               "b": {"eval": {"batch_size": 16, "decoding": [{"name": "greedy"}, {"name": "top_k=5"}]},
                     "task": {"limit_eval": 10}}}
    found = distinguishing_settings(results, configs)
    assert found == {"a": {"eval.batch_size": 8, "eval.decoding": ["greedy"]},
                     "b": {"eval.batch_size": 16, "eval.decoding": ["greedy", "top_k=5"]}}
    assert settings_text({}, found["b"]) == "batch_size=16 decoding=greedy,top_k=5"
    assert settings_text({}, {"train.batch_size": 4, "eval.batch_size": 16}) == \
        "train.batch_size=4 eval.batch_size=16"
    assert distinguishing_settings(results, {"a": configs["a"], "b": None}) == {"a": {}, "b": {}}  # no file, no diff


def test_ls_runs_filters_and_their_errors(store, capsys) -> None:
    root = str(store["root"])
    code, out, _ = run_main(["ls", "runs", "--store", root, "--status", "failed"], capsys)
    assert code == 0 and store["failed"][0].run_id() in out and f"1 run(s) (of 7) in {root}" in out
    code, out, _ = run_main(["ls", "runs", "--store", root, "--method", "lora", "--status", "ok,failed"], capsys)
    assert code == 0 and "3 run(s) (of 7)" in out and store["runs"][0].run_id() not in out
    code, out, _ = run_main(["ls", "runs", "--store", root, "--task", "lm", "--experiment", "other"], capsys)
    assert code == 0 and "1 run(s) in" in out
    code, out, _ = run_main(["ls", "runs", "--store", root, "--method", "vera"], capsys)  # a PEFT type, no runs
    assert code == 0 and "0 run(s) (of 7)" in out

    code, out, err = run_main(["ls", "runs", "--store", root, "--status", "great"], capsys)
    assert code == 2 and not out
    assert one_error_line(err) == ("error: --status: 'great' is not a run status; valid: ok, failed, diverged, "
                                   "cancelled, interrupted, running")
    code, _, err = run_main(["ls", "runs", "--store", root, "--task", "lmm"], capsys)
    assert code == 2 and "--task: 'lmm' is not a task (did you mean 'lm'?); valid: " in one_error_line(err)
    code, _, err = run_main(["ls", "runs", "--store", root, "--method", "lorra"], capsys)
    assert code == 2 and "--method: 'lorra' is not a method or method label (did you mean 'lora'?)" in err


def test_ls_runs_status_interrupted_finds_a_dead_running_run(tmp_path, capsys) -> None:
    from peftlab.store import Store

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({**EXPERIMENT, "methods": ["lora"], "grid": {}}, sort_keys=False))
    (rc,) = runs_of(path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that is gone
    Store(tmp_path / "s").write_result({**result_for(rc, "running"), "pid": proc.pid})
    code, out, _ = run_main(["ls", "runs", "--store", str(tmp_path / "s"), "--status", "interrupted"], capsys)
    assert code == 0 and rc.run_id() in out and "interrupted" in out


# ------------------------------------------------------------------------------------------ --set lists
@pytest.mark.parametrize(("a", "b"), [
    ("seeds=0,1", "seeds=[0, 1]"), ("seeds=0,1", "seeds=[0,1]"), ("method=lora,prompt", "method=[lora, prompt]"),
    ("grid.lora.r=4,8", "grid.lora.r=[4, 8]"), ("eval.decoding=greedy,top_k=5", "eval.decoding=[greedy, top_k=5]"),
    ("task=lm,sentiment", "tasks=[lm, sentiment]"),
])
def test_set_takes_lists_both_ways(a, b, store, capsys) -> None:
    docs = []
    for item in (a, b):
        code, out, err = run_main(["validate", str(store["path"]), "--set", item, "--json"], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    assert docs[0] == docs[1]


# ------------------------------------------------------------------------------------------ report
def test_report_prints_each_written_file_once_and_documents_its_default(store, tmp_path, capsys) -> None:
    out_dir = tmp_path / "rep"
    code, out, _ = run_main(["report", str(store["root"]), "--out", str(out_dir)], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == len(set(lines))
    assert {Path(p) for p in lines} == {p for p in out_dir.rglob("*") if p.is_file()}
    assert lines[-1] == str(out_dir / "report.html")

    assert build_parser().parse_args(["report"]).out == "reports/latest"
    code, out, _ = run_main(["report", "--help"], capsys)
    assert code == 0 and "(default: reports/latest)" in " ".join(out.split())


# ------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask, mode, tmp_path) -> None:
    from peftlab import files
    from peftlab.store import Store

    before = os.umask(umask)
    files.current_umask.cache_clear()
    try:
        assert files.current_umask() == umask and os.umask(umask) == umask  # reading it changed nothing
        path = tmp_path / "out.txt"
        path.write_text("old")
        path.chmod(0o600)
        files.atomic_write_text(path, "new")
        assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "new"
        with files.atomic_open(tmp_path / "data.bin", "wb") as fh:
            fh.write(b"\x00")
        assert stat.S_IMODE((tmp_path / "data.bin").stat().st_mode) == mode

        store = Store(tmp_path / "store")
        store.write_result({"run_id": "r1", "experiment": "e", "status": "ok", "label": "lora", "method": "lora",
                            "task": "lm", "seed": 0, "metrics": {}, "started_at": None})
        assert stat.S_IMODE((store.run_dir("r1") / "result.json").stat().st_mode) == mode
    finally:
        os.umask(before)
        files.current_umask.cache_clear()


# ------------------------------------------------------------------------------------------ init
@pytest.mark.parametrize(("task", "methods"), [
    ("sentiment", "lora,prompt"), ("code", "base,lora"), ("lm,qa", "prefix,lora+prompt,ia3,dora,vera,full"),
    ("math", "qlora"), ("instruct", "base"),
])
def test_init_writes_a_file_that_validates(task, methods, tmp_path, capsys) -> None:
    out = tmp_path / "my.yaml"
    code, stdout, err = run_main(["init", "--task", task, "--methods", methods, "-o", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    raw = yaml.safe_load(out.read_text())
    assert raw["name"] == "my" and raw["model"]["name"] == "smollm2-135m-instruct"
    code, stdout, err = run_main(["validate", str(out), "--json"], capsys)
    doc = json.loads(stdout)
    assert code == 0, err
    assert doc["tasks"] == task.split(",") and doc["methods"] == methods.split(",")
    code, stdout, err = run_main(["validate", str(out), "--preset", "smoke"], capsys)
    assert code == 0 and "1 seed(s)" in stdout, err


def test_init_comments_every_key(tmp_path, capsys) -> None:
    out = tmp_path / "e.yaml"
    assert run_main(["init", "--task", "sentiment,code", "--methods", "base,lora,prompt,vera", "-o", str(out)],
                    capsys)[0] == 0
    lines = out.read_text().splitlines()
    keys = 0
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        if body.startswith("- ") and ":" not in body:  # a method named alone: its comment is above
            assert lines[i - 1].lstrip().startswith("#"), line
            continue
        keys += 1
        assert " # " in line or lines[i - 1].lstrip().startswith("#"), f"uncommented key: {line!r}"
    assert keys > 60
    from peftlab.config import EXPERIMENT_KEYS

    text = out.read_text()
    for key in EXPERIMENT_KEYS:  # every top-level key is there, set or as a commented example
        assert f"\n{key}:" in text or f"\n# {key}:" in text or (key == "task" and "\ntasks:" in text), key


@pytest.mark.parametrize("example", ["grid", "tuning", "executor"])
def test_init_commented_examples_validate_when_uncommented(example, tmp_path, capsys) -> None:
    out = tmp_path / "e.yaml"
    assert run_main(["init", "--task", "lm", "--methods", "base,lora,prompt", "-o", str(out)], capsys)[0] == 0
    text = out.read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"# {example}: {{"))
    out.write_text(text.replace(line, line[2:]))
    code, stdout, err = run_main(["validate", str(out), "--json"], capsys)
    assert code == 0, err
    if example == "grid":
        assert json.loads(stdout)["grid"] == {"lora.r": [4, 8, 16], "train.lr": [1e-4, 5e-4]}


def test_init_reads_tasks_and_methods_from_the_registries(tmp_path, capsys, monkeypatch) -> None:
    from peftlab.methods import REGISTRY, Method
    from peftlab.methods.registry import choice, integer
    from peftlab.tasks.registry import all_tasks

    monkeypatch.setitem(REGISTRY, "toy", Method(name="toy", family="toy", description="A method registered here",
                                                defaults={"depth": 3, "mode": "fast"},
                                                checks={"depth": integer(1, 7), "mode": choice("fast", "slow")}))
    code, text, err = run_main(["init", "--task", "lm", "--methods", "lora", "-o", "-"], capsys)
    assert code == 0, err
    prose = " ".join(text.replace("#", " ").split())  # the comments, unwrapped
    assert "Other tasks: " + ", ".join(t for t in sorted(all_tasks()) if t != "lm") + " (" in prose
    others = prose.split("Other methods: ")[1].split(", or any PEFT type")[0]
    assert others.split(", ") == [n for n in REGISTRY if n != "lora"] and "toy" in others
    code, text, err = run_main(["init", "--task", "lm", "--methods", "toy", "-o", "-", "--name", "t"], capsys)
    assert code == 0, err
    assert yaml.safe_load(text)["methods"] == [{"toy": {"depth": 3, "mode": "fast"}}]
    assert "# toy: A method registered here" in text
    assert "depth: 3" in text and "must be between 1 and 7" in text and "one of fast, slow" in text


def test_init_field_help_covers_every_config_field_and_its_choices() -> None:
    from peftlab.cli.init import FIELD_HELP
    from peftlab.config import ConfigError, EvalConfig, ModelConfig, TaskConfig, TrainConfig, build

    expected = set()
    for section, cls in (("model", ModelConfig), ("task", TaskConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        for f in dataclasses.fields(cls):
            if f.init and not (section == "task" and f.name == "name"):
                expected.add(f"{section}.{f.name}")
                if f.type in ("str", str):  # a field with choices: the help names every one of them
                    data = {"name": "x"} if cls is TaskConfig else {}
                    try:
                        build(cls, {**data, f.name: "no-such-choice"}, section)
                    except ConfigError as exc:
                        if "valid: " in str(exc):
                            for valid in str(exc).rsplit("valid: ", 1)[1].split(", "):
                                assert valid in FIELD_HELP[f"{section}.{f.name}"], (f.name, valid)
    assert set(FIELD_HELP) == expected


def test_init_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    out = tmp_path / "e.yaml"
    out.write_text("mine\n")
    code, _, err = run_main(["init", "--task", "lm", "-o", str(out)], capsys)
    assert code == 2 and out.read_text() == "mine\n"
    assert one_error_line(err) == f"error: -o {out}: already exists; add --force to overwrite it, or give another -o"
    code, _, err = run_main(["init", "--task", "lm", "-o", str(out), "--force"], capsys)
    assert code == 0 and yaml.safe_load(out.read_text())["name"] == "e"


@pytest.mark.parametrize(("argv", "expected"), [
    (["--task", "sentimnt"], "error: --task: unknown task 'sentimnt' (did you mean 'sentiment'?); valid: code, "),
    (["--task", "lm", "--methods", "lora,lorra"], "error: --methods: unknown method 'lorra' (did you mean 'lora'?); "
                                                  "registered: base, dora, full, ia3, lora, lora+prompt, prefix"),
    (["--task", "lm", "--methods", "lora,lora"], "error: --methods: 'lora' named twice"),
    (["--task", "lm", "--methods", ","], "error: --methods: empty"),
    (["--task", "lm", "--model", "smollm3"], "error: --model: unknown model 'smollm3'"),
    (["--task", "lm", "--name", "a/b"], "error: --name"),
])
def test_init_bad_names_are_one_sentence(argv, expected, tmp_path, capsys) -> None:
    out = tmp_path / "e.yaml"
    code, stdout, err = run_main(["init", *argv, "-o", str(out)], capsys)
    assert code == 2 and not stdout and not out.exists()
    assert one_error_line(err).startswith(expected)


# ------------------------------------------------------------------------------------------ processes
def child(tmp_path: Path, commands: list[list[str]], **kwargs) -> subprocess.Popen:
    """The real CLI in a fresh process (each command in turn), with the tests' in-memory data instead of
    the data layer; exits with the largest exit status."""
    script = tmp_path / "cli_driver.py"
    script.write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import peftlab.data
        from conftest import fake_load_records
        peftlab.data.load_records = fake_load_records
        from peftlab.cli import main
        sys.exit(max(main(argv) for argv in {commands!r}))
        """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("TOKENIZERS_PARALLELISM", None)  # quiet_libraries sets it
    return subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, text=True, **kwargs)


def test_no_library_warnings_reach_the_terminal(tmp_path, tiny_llama_dir) -> None:
    """sweep (base, lora, prefix: prefix training trips a transformers deprecation) with its report, run, ls:
    stderr holds nothing but peftlab's own log lines, and a piped stdout no live-line carriage returns."""
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({
        "name": "quiet", "model": str(tiny_llama_dir), "task": {"lm": {"limit_train": 8, "limit_eval": 4, "max_length": 32}},
        "methods": ["base", "lora", "prefix"], "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0,
                                                         "eval_batches": 1, "num_threads": 1}}, sort_keys=False))
    proc = child(tmp_path, [["sweep", str(path), "--store", "s", "--report", "rep"],
                            ["run", str(path), "--store", "s", "--set", "method=base", "--force"],
                            ["ls", "runs", "--store", "s"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), out + err  # 1: a run of the tiny model may diverge, which is fine here
    assert "3 run(s) in s" in out and (tmp_path / "rep" / "report.html").exists()
    assert "\r" not in out
    stray = [line for line in err.splitlines() if not line.startswith(("ERROR peftlab", "WARNING peftlab"))]
    assert not stray, err


def test_a_closed_pipe_ends_quietly(tmp_path) -> None:
    """`peftlab ls tasks | head -1`: the reader goes away; no traceback, the shell's SIGPIPE status."""
    proc = child(tmp_path, [["ls", "tasks"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child (still importing) writes a byte
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err
