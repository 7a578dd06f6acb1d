"""Third-party noise, downgraded unless ``--verbose``: what libraries print on every run
that is not news to the user (progress bars of weight loading, Flower's doubled lines,
Opacus' advice, onnxruntime's shape warnings, torchmetrics' empty-class notes, Ray's
notice that it secured its local cluster)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Libraries whose INFO lines are not news to the user (the ONNX exporter's optimiser logs
# one line per deduplicated initializer; Flower logs each line through its own handler and
# the root logger, so twice; Ray's alembic and plugin set-up).
QUIET_LOGGERS = ("httpx", "urllib3", "datasets", "accelerate", "filelock", "onnx_ir", "onnxscript",
                 "torch.onnx", "flwr", "ray", "alembic", "opacus", "timm")  # fmt: skip
# (module, message start) of warnings that repeat on every run and ask nothing of the user;
# "" matches any module (a warning is filed under the line that triggered it, which for
# torch's hook warnings is accelerate's backward call).
QUIET_WARNINGS = (
    ("torchmetrics", "No positive samples in targets"),
    ("torchmetrics", "No negative samples in targets"),
    ("", "Secure RNG turned off"),
    ("", "Optimal order is the"),
    ("", "Full backward hook is firing"),
    ("", "Using a non-full backward hook"),
    ("flwr", ""),
)


def quiet_third_parties(verbose: bool = False, command: str | None = None) -> None:
    """Downgrade the noise above (``verbose``: leave every library as it is); ``command``
    is the subcommand about to run (``federate`` sets Flower's logger up here first)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # imported before: the variable was read already
        sys.modules["datasets"].disable_progress_bars()
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # read when huggingface_hub and transformers are imported: weight-loading bars, load reports
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        transformers = sys.modules["transformers"]
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    for module, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RootNoise) for f in handler.filters):
            handler.addFilter(RootNoise())
    ray_auth = logging.getLogger(RayAuthNotice.LOGGER)
    if not any(isinstance(f, RayAuthNotice) for f in ray_auth.filters):
        ray_auth.addFilter(RayAuthNotice())
    if command == "federate":
        _quiet_flower()


def _quiet_flower() -> None:
    """Flower sets its logger to DEBUG with a handler of its own when imported, and the
    root logger prints each line again: its own handler only, warnings and up, and not the
    deprecation notice of the simulation API this toolkit calls (nothing a user can change)."""
    from flwr.supercore import logger as flower

    flower.FLOWER_LOGGER.setLevel(logging.WARNING)
    flower.FLOWER_LOGGER.propagate = False
    for handler in flower.FLOWER_LOGGER.handlers:
        if not any(isinstance(f, FlowerNotice) for f in handler.filters):  # once per handler
            handler.addFilter(FlowerNotice())


class FlowerNotice(logging.Filter):
    """Flower's deprecation notice for the simulation API this toolkit calls."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


class RootNoise(logging.Filter):
    """Lines libraries log through the root logger itself, so no logger name can quiet
    them: onnxruntime's quantiser warns "Axis 1 is out-of-range" once per weight."""

    SOURCES = ("onnxruntime/quantization",)

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        return not (record.levelno < logging.ERROR and any(s in path for s in self.SOURCES))


class RayAuthNotice(logging.Filter):
    """Ray's notice, at every local cluster it starts (federate, bench on Ray), that it
    turned on its token authentication by default, which asks nothing of the user; its
    warning that authentication is off still shows."""

    LOGGER = "ray._private.authentication.authentication_token_setup"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this")
