"""noduleflow: a lung-nodule AI node for the hospital imaging network."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from services.core.logs import setup_logging
from services.core.settings import Settings, default_model_dir

DEFAULT_MODEL_DIR = default_model_dir()
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Database administration.")
app.add_typer(db_app, name="db")
fpr_app = typer.Typer(no_args_is_help=True, help="The second stage: mine, train, fit.")
app.add_typer(fpr_app, name="fpr")


def _settings() -> Settings:
    """Settings from the environment; a refused value ends the command with one line per
    setting (never the value itself) instead of a traceback."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "NODULEFLOW_" + "_".join(str(part) for part in error["loc"]).upper()
            typer.echo(f"noduleflow: {name}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level)
    return settings


@app.command()
def serve() -> None:
    """Receiver + worker + reporter in one process, on embedded defaults."""
    from services.serve import run

    run(_settings())


@app.command()
def receiver() -> None:
    """The DICOM receiver (C-ECHO, C-STORE), study tracker and outbox relay."""
    from services.receiver.main import run

    run(_settings())


@app.command()
def worker() -> None:
    """The inference worker: consumes study.ready, publishes study.result."""
    from services.worker.main import run

    run(_settings())


@app.command()
def reporter() -> None:
    """The reporter: SR/SEG/FHIR out, REST API, worklist."""
    from services.reporter.main import run

    run(_settings())


@app.command()
def demo(
    directory: Annotated[Path | None, typer.Argument(help="DICOM folder to send")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the result")] = 600.0,
) -> None:
    """Start serve, send a (generated) CT study, wait, print findings and where results went."""
    from services.demo import run

    raise typer.Exit(run(_settings(), directory, timeout=timeout))


class PhantomDomain(StrEnum):
    v1 = "v1"
    wide = "wide"
    shifted = "shifted"


@app.command()
def phantom(
    outdir: Path,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    nodules: Annotated[int | None, typer.Option(help="number of nodules (random if unset)")] = None,
    slices: Annotated[int | None, typer.Option(help="number of slices (random if unset)")] = None,
    domain: Annotated[
        PhantomDomain,
        typer.Option(
            help="v1: the original phantoms; wide: model v2's training distribution (noise "
            "by kernel, thick slices, prone/feet-first, contrast, look-alikes, artefacts, "
            "masses); shifted: wide with held-out scanner settings"
        ),
    ] = PhantomDomain.v1,
) -> None:
    """Write a synthetic chest CT series plus truth.json and the ground-truth mask."""
    from services.modeling.phantom import write_phantom

    result = write_phantom(outdir, seed=seed, nodules=nodules, slices=slices, domain=domain.value)
    typer.echo(f"wrote {result.n_slices} slices and {len(result.nodules)} nodules to {outdir}")


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="files or folders to send")],
    host: str = "127.0.0.1",
    port: int = 11112,
    aet: str = "NODULEFLOW_SCU",
    called_aet: str = "NODULEFLOW",
    associations: Annotated[int, typer.Option(help="parallel associations")] = 1,
) -> None:
    """C-STORE SCU with a progress bar."""
    from services.commands.scu import send_paths

    report = send_paths(
        paths,
        host=host,
        port=port,
        aet=aet,
        called_aet=called_aet,
        associations=associations,
        progress=True,
    )
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def analyze(
    directory: Path,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Run the model on a folder of DICOM files, no services; print findings."""
    from services.analysis.command import analyze_folder

    raise typer.Exit(analyze_folder(directory, settings=_settings(), as_json=as_json))


@app.command()
def jobs(
    study: Annotated[str | None, typer.Option(help="StudyInstanceUID")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    limit: int = 50,
) -> None:
    """Jobs with state, reason, per-stage timings and finding count."""
    from services.commands.jobs_view import job_rows, render_jobs

    rows = job_rows(_settings(), study_uid=study, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        render_jobs(rows)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="model folder to write")] = DEFAULT_MODEL_DIR,
    minutes: Annotated[float, typer.Option(help="training time budget")] = 60.0,
    seed: int = 0,
    device: str = "auto",
    rescore_only: Annotated[
        bool, typer.Option(help="only refit the candidate rescoring of the model in --out")
    ] = False,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads", envvar="NODULEFLOW_TRAIN_THREADS")
    ] = 2,
    cache_dir: Annotated[
        Path, typer.Option(help="training case cache", envvar="NODULEFLOW_TRAIN_CACHE")
    ] = Path("var/cache/train"),
    warm_start: Annotated[
        Path | None,
        typer.Option(
            help="start from these weights (a weights-*.pt from the cache, or a model.onnx)"
            " and fine-tune",
            envvar="NODULEFLOW_TRAIN_RESUME",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="save the training state here; continue from it if it exists"),
    ] = None,
    checkpoint_minutes: Annotated[
        float, typer.Option(help="training minutes between checkpoints")
    ] = 5.0,
    val_cache: Annotated[
        Path,
        typer.Option(help="validation case cache (--rescore-only)", envvar="NODULEFLOW_VAL_CACHE"),
    ] = Path("var/cache/valfull"),
    recipe: Annotated[
        str, typer.Option(help="named training recipe (services/modeling/training/recipe.py)")
    ] = "v2",
) -> None:
    """Train the nodule segmentation model on synthetic chest CT and export it to ONNX."""
    if rescore_only:
        from services.core.logs import setup_logging
        from services.modeling.evaluation.rescoring import rescore_model

        setup_logging("INFO", service="train")
        typer.echo(json.dumps(rescore_model(out, cache_dir=val_cache), indent=2))
        return
    from services.modeling.training.recipe import RECIPES
    from services.modeling.training.train import main

    if recipe not in RECIPES:
        raise typer.BadParameter(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    main(
        recipe=RECIPES[recipe],
        out=out,
        minutes=minutes,
        seed=seed,
        device=device,
        threads=threads,
        cache_dir=cache_dir,
        warm_start=warm_start,
        checkpoint=checkpoint,
        checkpoint_s=checkpoint_minutes * 60.0,
    )


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL_DIR,
    scans: Annotated[int, typer.Option(help="held-out phantoms")] = 30,
    seed: Annotated[int, typer.Option(help="first held-out seed")] = 100000,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    cache_dir: Annotated[
        Path, typer.Option(help="held-out case cache", envvar="NODULEFLOW_EVAL_CACHE")
    ] = Path("var/cache/eval"),
    domain: Annotated[
        str | None, typer.Option(help="phantom domain: v1, wide or shifted (held-out shift)")
    ] = None,
) -> None:
    """FROC/CPM, Dice and diameter error on held-out phantoms, by stratum."""
    from services.modeling.evaluation.evaluate import main

    main(
        model_dir=model_dir,
        scans=scans,
        seed=seed,
        as_json=as_json,
        cache_dir=cache_dir,
        domain=domain,
    )


@app.command("evaluate-real")
def evaluate_real(
    folders: Annotated[list[Path], typer.Argument(help="real series folders with truth.json")],
    model_dir: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL_DIR,
) -> None:
    """The model on real CT series: findings, false positives, masses, kernel agreement."""
    from services.modeling.evaluation.realct import main

    print(json.dumps(main(folders, model_dir), indent=1))


@fpr_app.command("mine")
def fpr_mine(
    out: Annotated[Path, typer.Argument(help="folder of mined shards")],
    first: Annotated[int, typer.Option(help="first phantom seed")] = 60000,
    count: Annotated[int, typer.Option(help="phantoms to mine")] = 80,
    domain: Annotated[str | None, typer.Option(help="phantom domain (v1, wide, shifted)")] = None,
    real: Annotated[
        list[Path] | None, typer.Option(help="real series folder with truth.json (negatives)")
    ] = None,
    model_dir: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL_DIR,
) -> None:
    """Mine second-stage samples: stage one's candidates, nodules and look-alike points."""
    from services.modeling.fpr.command import mine_command

    mine_command(model_dir, out, first, count, domain, real or [])


@fpr_app.command("train")
def fpr_train(
    shards: Annotated[list[Path], typer.Argument(help="folders of mined shards")],
    checkpoint: Annotated[Path, typer.Option(help="checkpoint (resumed if it exists)")] = Path(
        "var/cache/fpr/checkpoint.pt"
    ),
    minutes: Annotated[float, typer.Option(help="training minutes in this run")] = 30.0,
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    exclude: Annotated[
        list[str] | None, typer.Option(help="leave out shards whose name contains this")
    ] = None,
) -> None:
    """Train (or continue training) the second-stage patch classifier."""
    from services.modeling.fpr.command import train_command

    train_command(shards, checkpoint, minutes, threads, device, exclude or [])


@fpr_app.command("fit")
def fpr_fit(
    val: Annotated[Path, typer.Argument(help="folder of validation shards")],
    checkpoint: Annotated[Path, typer.Option(help="trained checkpoint")] = Path(
        "var/cache/fpr/checkpoint.pt"
    ),
    model_dir: Annotated[Path, typer.Option(help="model folder")] = DEFAULT_MODEL_DIR,
    masses: Annotated[str | None, typer.Option(help="masses section as JSON")] = None,
    fp_per_scan: Annotated[float, typer.Option(help="operating point")] = 1.0,
) -> None:
    """Calibrate the second stage on validation candidates and install it into the model."""
    from services.modeling.fpr.command import fit_command

    fit_command(checkpoint, val, model_dir, masses, fp_per_scan)


@app.command()
def purge(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print, delete nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Retention: the studies whose images and artefacts are purged (study, age, bytes,
    reason), by NODULEFLOW_RETENTION_* (docs/operations.md, "Retention")."""
    from services.commands import purge_view

    settings = _settings()
    try:
        if dry_run:
            plan, rows = purge_view.dry_run(settings)
            if as_json:
                typer.echo(json.dumps({**purge_view.summary(plan), "studies": rows}, indent=2))
            else:
                purge_view.render_plan(plan, rows)
            return
        done = purge_view.purge_now(settings)
    except ValueError as exc:
        typer.echo(f"noduleflow: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([p.__dict__ for p in done], indent=2))
    else:
        purge_view.render_purged(done)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations."""
    from services.core.db import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    typer.echo("database is up to date")


if __name__ == "__main__":
    app()
