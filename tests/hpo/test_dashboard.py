"""``python -m hpo.dashboard``: the study, its note, attrs and trial artifacts as the dashboard
serves them (WSGI in-process and over HTTP), and the launcher's errors."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest

from hpo import api, dashboard
from hpo.artifacts import LEARNING_CURVE_NAME
from hpo.dashboard import bind, build_app, main
from hpo.records import trial_attrs
from tests.hpo.test_config import TOY
from tests.hpo.test_run import study_file

MULTI = TOY.replace("[sampler]", '[[objectives]]\nmetric = "score"\ndirection = "maximize"\n'
                                 "[sampler]").replace('name = "tpe"', 'name = "nsga2"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A finished multi-objective toy study (4 trials) on SQLite, as ``hpo.run`` leaves it."""
    tmp = tmp_path_factory.mktemp("dash")
    path = study_file(tmp, MULTI.replace('description = "toy"',
                                         'description = "toy descent, two objectives"'))
    out = tmp / "out"
    url = f"sqlite:///{tmp / 'hpo.db'}"
    assert api.run_study(str(path), storage=url, output=str(out)) == 0
    return url, out


def call(app: Any, path: str) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET",
                               "HTTP_ACCEPT_ENCODING": "gzip"}
    setup_testing_defaults(environ)
    got: dict[str, str] = {}

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        got["status"] = status

    body = b"".join(app(environ, start_response))
    return got["status"], body


def test_study_page_data_has_names_note_attrs_and_artifacts(ran: tuple[str, Path]) -> None:
    url, out = ran
    app, study_id, _ = build_app(url, output=out, study="toy")
    study = optuna.load_study(study_name="toy", storage=url)
    assert study_id == study._study_id

    status, body = call(app, "/api/studies")
    assert status.startswith("200")
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["toy"]

    status, body = call(app, f"/api/studies/{study_id}")
    assert status.startswith("200")
    data = json.loads(body)
    assert data["name"] == "toy"
    assert data["objective_names"] == ["loss", "score"]
    assert data["note"]["body"].startswith("## toy\n\ntoy descent, two objectives\n")
    assert "- objectives: loss (minimize), score (maximize)" in data["note"]["body"]
    assert len(data["trials"]) == 4
    for t in data["trials"]:
        frozen = study.trials[t["number"]]
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        # the per-epoch history is a record (hpo.records), not a user attr: it is the
        # learning curve below
        assert "history" not in attrs and len(trial_attrs(frozen)["history"]) == 2
        assert json.loads(attrs["epoch"]) == 2
        names = {a["filename"]: a for a in t["artifacts"]}
        assert set(names) == {"metrics.json", LEARNING_CURVE_NAME, "checkpoint.pt"}
        # the learning curve is also the trial's note, as a table
        assert t["note"]["body"].startswith(f"### Learning curve (trial {t['number']})")
        assert "| epoch | loss |" in t["note"]["body"]
        # each artifact downloads as the bytes the trial wrote
        trial_dir = out / "toy" / f"trial_{t['number']}"
        for name in ("metrics.json", LEARNING_CURVE_NAME):
            meta = names[name]
            status, content = call(
                app, f"/artifacts/{study_id}/{t['trial_id']}/{meta['artifact_id']}")
            assert status.startswith("200")
            assert content == (trial_dir / name).read_bytes()
        assert (trial_dir / LEARNING_CURVE_NAME).read_bytes().startswith(PNG_MAGIC)
        metrics = json.loads((trial_dir / "metrics.json").read_text())
        assert [metrics["objectives"]["loss"], metrics["objectives"]["score"]] == t["values"]


def test_old_study_without_note_gets_its_description(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    study = optuna.create_study(study_name="old", storage=url)
    study.set_user_attr("description", "made before notes existed")
    from optuna_dashboard import get_note

    assert get_note(study) == ""
    _, _, output = build_app(url, study="old")
    assert get_note(study).startswith("## old\n\nmade before notes existed\n")
    # no trial says where its outputs are: the default, and nothing is created on disk
    assert output == Path("output") and not (tmp_path / "output").exists()


def test_server_binds_loopback_and_serves_the_bundle(ran: tuple[str, Path]) -> None:
    url, out = ran
    args = dashboard.build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8080)
    app, study_id, _ = build_app(url, output=out, study="toy")
    server = bind(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}", timeout=10) as r:
            assert json.loads(r.read())["name"] == "toy"
        # the page and its JavaScript bundle come from the installed wheel (no network)
        with urllib.request.urlopen(f"{base}/dashboard/studies/{study_id}", timeout=10) as r:
            page = r.read().decode()
        assert "bundle.js" in page
        req = urllib.request.Request(f"{base}/static/bundle.js",
                                     headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and len(r.read()) > 100_000
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_main_prints_the_study_address(ran: tuple[str, Path], capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, out = ran

    def stop_at_once(self: Any) -> None:  # stands in for the user's Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(dashboard._ThreadingServer, "serve_forever", stop_at_once)
    port = _free_port()
    # no --output: the artifacts are found where the study's workers wrote them
    assert main(["--study", "toy", "--storage", url, "--port", str(port)]) == 0
    assert capsys.readouterr().out == (
        f"optuna-dashboard for {url} at http://127.0.0.1:{port}/dashboard/studies/1 "
        f"(artifacts: {(out / 'artifacts').resolve()}); press Ctrl-C to stop\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use(ran: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    url, out = ran
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--study", "toy", "--storage", url, "--output", str(out),
                     "--port", str(port)]) == 2
    assert capsys.readouterr().err == (
        f"error: port {port} on 127.0.0.1 is in use; stop the other server or choose another "
        "port with --port\n")


def test_unknown_study_lists_existing(ran: tuple[str, Path], capsys) -> None:
    url, out = ran
    assert main(["--study", "nope", "--storage", url, "--output", str(out)]) == 2
    assert capsys.readouterr().err == f"error: unknown study 'nope' in {url}; studies there: toy\n"


def test_unreachable_storage(capsys: pytest.CaptureFixture) -> None:
    url = "postgresql+psycopg2://alice:hunter2@127.0.0.1:1/nowhere"
    assert main(["--storage", url]) == 2
    assert capsys.readouterr().err == (
        "error: cannot connect to storage postgresql+psycopg2://alice:***@127.0.0.1:1/nowhere: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused; check the '
        "host, port, database name and credentials\n")


def test_bad_port_and_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert main(["--port", "70000", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --port must be between 0 and 65535, got 70000\n"
    assert main(["--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"error: no study database at {(tmp_path / 'hpo.db').resolve()}; run `python -m hpo.run "
        "--study NAME` first, or pass --storage (or set $HPO_STORAGE)\n")
    assert not (tmp_path / "hpo.db").exists()


def test_help_has_an_example(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "Example: python -m hpo.dashboard --study demo --port 8080" in \
        " ".join(capsys.readouterr().out.split())


def test_failed_trial_publishes_its_traceback_and_curve(tmp_path: Path, monkeypatch) -> None:
    """A trial that crashes mid-run still shows why (traceback) and how far it got."""
    from dataclasses import replace

    from tests.hpo import toy_workload

    def crash_after_training(config, ctx):  # noqa: ANN001, ANN202
        toy_workload.train(config, ctx)
        raise RuntimeError("disk full while saving the model")

    monkeypatch.setattr(toy_workload, "WORKLOAD",
                        replace(toy_workload.WORKLOAD, train=crash_after_training))
    path = study_file(tmp_path, TOY.replace("n_trials = 4", "n_trials = 1"))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    out = tmp_path / "out"
    # every trial crashes: the worker gives up after 5 in a row (exit 1)
    assert api.run_study(str(path), storage=url, output=str(out)) == 1
    app, study_id, _ = build_app(url, output=out, study="toy")
    data = json.loads(call(app, f"/api/studies/{study_id}")[1])
    first = data["trials"][0]
    assert first["state"] == "Fail"
    names = {a["filename"] for a in first["artifacts"]}
    assert {"traceback.txt", LEARNING_CURVE_NAME, "checkpoint.pt"} <= names
    assert "disk full while saving the model" in (
        out / "toy" / "trial_0" / "traceback.txt").read_text()


def test_artifacts_are_hard_links_that_later_writes_cannot_change(tmp_path: Path) -> None:
    """A checkpoint is linked into the artifact store, not copied (no second copy on disk);
    the trial files are replaced by rename, so rewriting one leaves the artifact as it was."""
    from hpo.artifacts import artifact_store
    from trainers.context import atomic_write_bytes

    trial_dir = tmp_path / "trial_0"
    source = trial_dir / "checkpoint.pt"
    atomic_write_bytes(source, b"epoch 1 weights")
    store = artifact_store(tmp_path / "out")
    with open(source, "rb") as f:
        store.write("a1", f)
    stored = tmp_path / "out" / "artifacts" / "a1"
    assert stored.stat().st_ino == source.stat().st_ino and source.stat().st_nlink == 2
    atomic_write_bytes(source, b"epoch 2 weights")
    assert stored.read_bytes() == b"epoch 1 weights"
    assert source.read_bytes() == b"epoch 2 weights"

    class NotAFile:  # a stream with no path on disk is copied, as Optuna does
        name = 3

        def __init__(self) -> None:
            import io

            self._buf = io.BytesIO(b"streamed")

        def read(self, n: int = -1) -> bytes:
            return self._buf.read(n)

    store.write("a2", NotAFile())  # type: ignore[arg-type]
    assert (tmp_path / "out" / "artifacts" / "a2").read_bytes() == b"streamed"
