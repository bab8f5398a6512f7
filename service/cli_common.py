"""What several `prm` commands share: option aliases whose meaning is the same everywhere, and exit 2.

Exit codes of every command: 0 done, 1 the work ran but failed (a data job's failed records, a server
that died), 2 it could not start (a bad option, an unreadable input, an unknown model or store).
Defaults come from their one home (service.config.ServeConfig); the aliases only carry flag and help.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

from service.config import BATCH_TOKENS_HELP, Dtype, LogLevel

LogLevelOption = Annotated[LogLevel, typer.Option(envvar="PRM_LOG_LEVEL", help="Log level.")]
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="A store NAME or NAME@VERSION, a checkpoint directory or a Hub id (default: the store's default model).",
        show_default=False,
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        envvar="PRM_STORE",
        help="The model store directory (default: ./model_store if it exists, else the bundled demo store).",
        show_default=False,
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (as for `prm serve`).")]
DtypeOption = Annotated[
    Dtype, typer.Option(help="auto (the checkpoint's dtype on GPU, float32 on CPU), float32, bfloat16 or float16.")
]
BatchTokensOption = Annotated[int | None, typer.Option(min=1, help=BATCH_TOKENS_HELP, show_default=False)]


def usage_error(message: str) -> NoReturn:
    """Print one line to stderr and exit 2: the command could not start."""
    typer.echo(message, err=True)
    raise typer.Exit(2)


@contextmanager
def input_errors(*also: type[Exception]) -> Iterator[None]:
    """Turn the jobs' input errors (a bad record, file, checkpoint or store name; `also`) into one line and exit 2."""
    from service.jobs.inputs import InputError
    from service.prm.checkpoint import CheckpointError

    try:
        yield
    except (InputError, CheckpointError, *also) as error:
        usage_error(f"error: {error}")
