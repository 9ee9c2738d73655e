"""The `tuneboard` commands (typer): each one a few API calls (training/cli/client.py) and what it prints."""
from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from training.cli import config as store
from training.cli.client import ERROR, OK, REFUSED, RUN_FAILED, Api, CliError, refusal
from training.cli.parsing import InputError, parse_sets
from training.cli.watch import RunView, follow

EXIT_CODES = (f"Exit codes: {OK} success; {REFUSED} refused input (a 400 from the server, its field errors printed, "
              f"or a bad argument); {RUN_FAILED} the watched run or sweep did not succeed (failed, lost or stopped); "
              f"{ERROR} anything else (network, authentication, a missing object).")

app = typer.Typer(help=f"Tuneboard from the command line, over its REST API.\n\n{EXIT_CODES}",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
datasets_app = typer.Typer(help="Your teams' datasets.", no_args_is_help=True)
runs_app = typer.Typer(help=f"Runs: create, list, show, watch, stop, resume, metrics, gguf.\n\n{EXIT_CODES}",
                       no_args_is_help=True)
sweeps_app = typer.Typer(help=f"Sweeps: create, watch, stop.\n\n{EXIT_CODES}", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(runs_app, name="runs")
app.add_typer(sweeps_app, name="sweeps")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages whole, for scripts to grep


RunId = Annotated[int, typer.Argument(metavar="ID", help="The run's id")]
SweepId = Annotated[int, typer.Argument(metavar="ID", help="The sweep's id")]


def api() -> Api:
    try:
        return Api(store.load())
    except store.ConfigError as exc:
        raise CliError(str(exc)) from None


def show_json(data: Any) -> None:
    out.print_json(json.dumps(data))


def overrides_of(sets: list[str] | None) -> dict:
    try:
        return parse_sets(sets or [])
    except InputError as exc:
        raise CliError(str(exc), REFUSED) from None


# login ------------------------------------------------------------------------------------------------------------
@app.command()
def login(url: Annotated[str, typer.Option(prompt="Server URL", help="e.g. http://localhost:8000")],
          token: Annotated[str, typer.Option(prompt="API token (Settings → API tokens)", hide_input=True)]
          ) -> None:
    """Check a token against the server (me/) and store both in your config dir (0600)."""
    try:
        config = store.Config(url=store.normalize_url(url), token=token.strip())
    except store.ConfigError as exc:
        raise CliError(str(exc), REFUSED) from None
    me = Api(config).get("/me/")
    path = store.save(config)
    teams = ", ".join(f"{t['name']} ({t['role']})" for t in me["teams"]) or "none"
    out.print(f"Logged in to {config.url} as {me['username']}; teams: {teams}. Saved to {path}")


# datasets ---------------------------------------------------------------------------------------------------------
@datasets_app.command("upload")
def datasets_upload(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
                    name: Annotated[str, typer.Option(help="The dataset's name")],
                    team: Annotated[int | None, typer.Option(help="The team's id (if you are in several)")] = None,
                    format: Annotated[str | None, typer.Option(help="The file's format, if not detected")] = None,
                    ) -> None:
    """Upload a dataset file; every row is checked as on the Datasets page."""
    data = {"name": name, **({"team": str(team)} if team else {}), **({"format": format} if format else {})}
    with file.open("rb") as fh:
        dataset = api().post("/datasets/", data=data, files={"file": (file.name, fh)})
    out.print(f"dataset {dataset['id']}: {dataset['name']} ({dataset['rows']} rows, {dataset['format']}) "
              f"in {dataset['team_name']}")


@datasets_app.command("list")
def datasets_list() -> None:
    """Your teams' datasets."""
    table = Table("id", "name", "team", "format", "rows")
    for d in api().pages("/datasets/"):
        table.add_row(str(d["id"]), d["name"], d["team_name"], d["format"], str(d["rows"]))
    out.print(table)


# runs -------------------------------------------------------------------------------------------------------------
@runs_app.command("create")
def runs_create(dataset: Annotated[int | None, typer.Option(help="The dataset's id (default with --from: "
                                                                  "that run's)")] = None,
                from_: Annotated[int | None, typer.Option("--from", help="Start from this run: its dataset, preset "
                                                          "and config, with --set over them; the new run links it "
                                                          "as its parent")] = None,
                preset: Annotated[int | None, typer.Option(help="The preset's id")] = None,
                set_: Annotated[list[str] | None, typer.Option("--set", help="NAME=VALUE, a config override (JSON "
                                                             "where it parses: r=32, learning_rate=1e-4); "
                                                             "repeatable")] = None,
                name: Annotated[str | None, typer.Option()] = None,
                queue: Annotated[str | None, typer.Option()] = None,
                watch: Annotated[bool, typer.Option(help="Then watch it to its end (exit 3 if it fails)")] = False,
                ) -> None:
    """Start a run from a dataset, a preset and overrides (or from an earlier run with --from), checked as the New
    run form checks them."""
    if dataset is None and from_ is None:
        raise CliError("give --dataset, or --from RUN to start from a run", REFUSED)
    body = {"overrides": overrides_of(set_), **({"dataset": dataset} if dataset is not None else {}),
            **({"from_run": from_} if from_ is not None else {}), **({"preset": preset} if preset else {}),
            **({"name": name} if name else {}), **({"queue": queue} if queue else {})}
    run = api().post("/runs/", body)
    out.print(f"run {run['id']}: {run['name']} {run['status']}" + (f" (from run {run['parent']})"
                                                                    if run.get("parent") else ""))
    if watch:
        runs_watch(run["id"])


@runs_app.command("list")
def runs_list(status: Annotated[str | None, typer.Option()] = None,
              team: Annotated[int | None, typer.Option()] = None,
              limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 20) -> None:
    """Your teams' runs, newest first."""
    params = {k: v for k, v in {"status": status, "team": team}.items() if v is not None}
    params["page_size"] = max(1, min(limit, 200))
    table = Table("id", "name", "status", "step", "dataset", "team")
    for i, r in enumerate(api().pages("/runs/", **params)):
        if i >= limit:
            break
        table.add_row(str(r["id"]), r["name"], r["status"], str(r["last_step"]), r["dataset_name"], r["team_name"])
    out.print(table)


@runs_app.command("show")
def runs_show(run_id: RunId) -> None:
    """A run's detail as JSON: status, config, derived values, plan."""
    show_json(api().get(f"/runs/{run_id}/"))


def _metrics_line(view: RunView) -> str:
    shown = []
    for name, value in view.metrics.items():
        if value is not None:
            shown.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return "  ".join(shown)


def _finding_line(f: dict) -> str:
    params = f" (look at {', '.join(f['parameters'])})" if f.get("parameters") else ""
    return f"finding at step {f.get('step')}: [{f.get('severity')}] {f.get('title')}: {f.get('message')}{params}"


@runs_app.command("watch")
def runs_watch(run_id: RunId) -> None:
    """Follow a run live (progress, latest metrics, findings) until it ends.

    Exit 0 if it succeeded, 3 if it failed, was lost or was stopped, 1 if the server could not be followed."""
    client = api()
    run = client.get(f"/runs/{run_id}/")
    view = RunView()
    live = out.is_terminal
    progress = Progress(TextColumn("run {task.fields[run]} {task.fields[status]}"), BarColumn(),
                        TaskProgressColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} {task.fields[m]}"),
                        console=out, disable=not live)
    task = progress.add_task("", total=run.get("total_steps") or None, run=run_id, status=run["status"], m="")
    printed = {"status": None, "step": -1}

    def changed(v: RunView) -> None:
        for finding in v.take_new_findings():
            progress.console.print(_finding_line(finding))
        status = v.status.get("status", run["status"])
        total = v.status.get("total_steps") or run.get("total_steps") or None
        progress.update(task, completed=v.last_step, total=total, status=status, m=_metrics_line(v))
        if not live and (status != printed["status"] or v.last_step != printed["step"]):
            out.print(f"run {run_id} {status} step {v.last_step}/{total or '?'} {_metrics_line(v)}".rstrip())
            printed.update(status=status, step=v.last_step)

    with progress:
        follow(client.ws_url(run["ws"]), client.config.token, view, changed)
    status = view.status
    if status["status"] == "succeeded":
        out.print(f"run {run_id} succeeded at step {view.last_step}")
        return
    reason = f": {status.get('error_class')}: {status.get('error')}" if status.get("error") else ""
    err.print(f"run {run_id} {status['status']}{reason}")
    raise typer.Exit(RUN_FAILED)


@runs_app.command("stop")
def runs_stop(run_id: RunId) -> None:
    """Stop a run: a queued one at once, a training one at its next step (with a checkpoint)."""
    run = api().post(f"/runs/{run_id}/stop/")
    out.print(f"run {run['id']} {run['status']}")


@runs_app.command("resume")
def runs_resume(run_id: RunId, queue: Annotated[str | None, typer.Option()] = None) -> None:
    """Resume a stopped, lost or failed run from its last checkpoint, as a new run."""
    run = api().post(f"/runs/{run_id}/resume/", {"queue": queue} if queue else {})
    out.print(f"run {run['id']}: resumes run {run_id}, {run['status']}")


@runs_app.command("metrics")
def runs_metrics(run_id: RunId,
                 csv: Annotated[bool, typer.Option(help="CSV with a header row (else JSON)")] = False) -> None:
    """The run's metric points (its resume chain's curve; a point's run column names the run that logged it)."""
    response = api().request("GET", f"/runs/{run_id}/metrics/", params={"format": "csv" if csv else "json"})
    sys.stdout.write(response.text)


@runs_app.command("export")
def runs_export(run_id: RunId,
                tensorboard: Annotated[Path, typer.Option(help="The folder for the event files")]) -> None:
    """Write the run's TensorBoard event files into DIR/run-<id>/ (an ended run's, or those its worker wrote)."""
    response = api().request("GET", f"/runs/{run_id}/tensorboard/")
    written = unpack_zip(response.content, tensorboard)
    out.print(f"run {run_id}: {len(written)} TensorBoard file(s) in {tensorboard.resolve()}; view them with "
              f"`tensorboard --logdir {tensorboard}`")


@runs_app.command("gguf")
def runs_gguf(run_id: RunId,
              quant: Annotated[list[str] | None, typer.Option(
                  help="A llama.cpp quantization of the merged model, repeatable: q8_0, q6_k, q5_k_m, q4_k_m, q4_0 "
                       "(default q8_0 and q4_k_m)")] = None,
              merged: Annotated[bool, typer.Option(help="The merged model as GGUF (16-bit and --quant)")] = True,
              lora: Annotated[bool, typer.Option(help="The adapter as a GGUF LoRA, with its base's GGUF")] = True,
              download: Annotated[Path | None, typer.Option(help="Download the files into this folder, each "
                                                                  "checked against its sha256")] = None,
              wait: Annotated[bool, typer.Option(help="Follow the export to its end")] = True) -> None:
    """Export a succeeded run as GGUF files with Ollama Modelfiles (llama.cpp's own converters, on the run's worker)."""
    client = api()
    body: dict[str, Any] = {"merged_gguf": merged, "lora_gguf": lora}
    if quant is not None:
        body["quantizations"] = quant
    elif not merged:
        body["quantizations"] = []
    export = client.post(f"/runs/{run_id}/exports/", body)
    out.print(f"export {export['id']} of run {run_id}: {export['status']} on {export['queue']}")
    if not wait and download is None:
        return
    export = _follow_export(client, export)
    if export["status"] != "succeeded":
        raise CliError(f"export {export['id']} failed: {export['error']}", RUN_FAILED)
    for f in export["files"]:
        out.print(f"{f['name']}  {f['size']} bytes  sha256 {f['sha256']}", soft_wrap=True)
    if download is not None:
        download.mkdir(parents=True, exist_ok=True)
        for f in export["files"]:
            _download_checked(client, f"/exports/{export['id']}/files/{f['name']}", download / f["name"], f["sha256"])
        out.print(f"{len(export['files'])} file(s) in {download.resolve()}; with Ollama: cd {download} && "
                  f"ollama create run-{run_id} -f Modelfile", soft_wrap=True)


def _follow_export(client: Api, export: dict) -> dict:
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=err,
                  transient=True) as progress:
        task = progress.add_task("queued", total=None)
        while export["status"] in ("queued", "running"):
            time.sleep(1)
            export = client.get(f"/exports/{export['id']}/")
            step = export["progress"]
            progress.update(task, description=step["message"][:80] or export["status"],
                            total=step["total"] or None, completed=step["done"])
    return export


def _download_checked(client: Api, path: str, target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    try:
        with client.http.stream("GET", path) as response, target.open("wb") as fh:
            if response.status_code >= 400:
                response.read()
                raise refusal(response)
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot download {target.name}: {exc}") from None
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise CliError(f"{target.name}: its sha256 is {digest.hexdigest()}, not the export's {sha256}; removed")


def unpack_zip(data: bytes, folder: Path) -> list[Path]:
    """The archive's files under `folder`; a member whose path would leave it is refused, nothing written."""
    root = folder.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        targets = [(root / m.filename).resolve() for m in members]
        outside = [m.filename for m, t in zip(members, targets) if root not in t.parents]
        if outside:
            raise CliError(f"the server's archive has a path outside {root}: {outside[0]}")
        for member, target in zip(members, targets):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    return targets


# sweeps -----------------------------------------------------------------------------------------------------------
@sweeps_app.command("create")
def sweeps_create(template: Annotated[str, typer.Option(help="The procedure: a parameter's template (r, learning_rate, "
                                                          "...) or 'search'")],
                  dataset: Annotated[int | None, typer.Option()] = None,
                  preset: Annotated[int | None, typer.Option()] = None,
                  base_run: Annotated[int | None, typer.Option()] = None,
                  set_: Annotated[list[str] | None, typer.Option("--set", help="NAME=VALUE, a base config override; "
                                                                                "repeatable")] = None,
                  param: Annotated[list[str] | None, typer.Option(help="NAME=VALUE, the procedure's parameter "
                                                                       "(values=[2,4]); repeatable")] = None,
                  name: Annotated[str | None, typer.Option()] = None,
                  queue: Annotated[str | None, typer.Option()] = None) -> None:
    """Start a sweep, checked as the New sweep form checks it."""
    body = {"template": template, "overrides": overrides_of(set_), "params": overrides_of(param),
            **{k: v for k, v in {"dataset": dataset, "preset": preset, "base_run": base_run, "name": name,
                                 "queue": queue}.items() if v is not None}}
    sweep = api().post("/sweeps/", body)
    out.print(f"sweep {sweep['id']}: {sweep['name']} {sweep['status']}")


@sweeps_app.command("stop")
def sweeps_stop(sweep_id: SweepId) -> None:
    """Stop the sweep and every member that has not ended."""
    sweep = api().post(f"/sweeps/{sweep_id}/stop/")
    out.print(f"sweep {sweep['id']} {sweep['status']}")


def _sweep_table(sweep: dict) -> Table:
    table = Table("phase", "member", "status", "step", "best eval loss", "outcome",
                  title=f"sweep {sweep['id']} {sweep['name']}: {sweep['status']}")
    for phase in sweep.get("state", {}).get("phases", []):
        for m in phase.get("members", []):
            best = m.get("best_eval_loss")
            table.add_row(str(phase.get("key", phase.get("index", ""))), m["name"], m["status"],
                          str(m.get("last_step", "")), f"{best:.4g}" if best is not None else "",
                          ("winner" if m.get("winner") else m.get("outcome") or ""))
    return table


@sweeps_app.command("watch")
def sweeps_watch(sweep_id: SweepId,
                 interval: Annotated[float, typer.Option(help="Seconds between reads of the sweep")] = 3.0) -> None:
    """Follow a sweep (its members' status and losses) until it ends. Exit 0 finished, 3 failed or stopped."""
    client, last = api(), None
    while True:
        sweep = client.get(f"/sweeps/{sweep_id}/")
        summary = json.dumps(sweep.get("state", {}).get("phases", []), sort_keys=True, default=str) + sweep["status"]
        if summary != last:
            out.print(_sweep_table(sweep))
            last = summary
        if sweep["status"] in ("finished", "stopped", "failed"):
            break
        time.sleep(interval)
    if sweep["status"] != "finished":
        err.print(f"sweep {sweep_id} {sweep['status']}")
        raise typer.Exit(RUN_FAILED)


# compare ----------------------------------------------------------------------------------------------------------
@app.command()
def compare(run_ids: Annotated[list[int], typer.Argument(metavar="ID...")],
            export: Annotated[str | None, typer.Option("--export", help="csv or json: the runs' full-resolution "
                                                                        "points, on stdout")] = None) -> None:
    """Compare runs: what differs and their outcomes, or --export their points."""
    runs = ",".join(str(i) for i in run_ids)
    client = api()
    if export:
        sys.stdout.write(client.request("GET", "/compare/export/", params={"runs": runs, "format": export}).text)
        return
    data = client.get("/compare/", runs=runs)
    table = Table("run", "status", *data["differing"])
    for r in data["runs"]:
        table.add_row(f"{r['id']} {r['name']}", r["status"], *(str(r["config"].get(k, "")) for k in data["differing"]))
    out.print(table)


def main(args: list[str] | None = None) -> None:
    """The entry point: a CliError is its message on stderr and its exit code; a bad argument (click's usage
    error) is refused input."""
    try:
        code = app(args=args, standalone_mode=False)
    except CliError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(ERROR)
    except typer.TyperException as exc:  # click's own: a usage error's exit code is 2, the others' 1
        exc.show()
        sys.exit(getattr(exc, "exit_code", ERROR))
    sys.exit(code if isinstance(code, int) else OK)
