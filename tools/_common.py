"""Set-up shared by the command-line tools (never imported outside tools/)."""
import logging

from detectron2.utils.logger import setup_logger


def register_real_datasets() -> None:
    """Register the real datasets that ``converters.builtin`` finds on disk (lazily)."""
    try:
        from converters.builtin import register_builtin_datasets
    except ImportError:  # converters not installed: only the synthetic datasets exist
        return
    register_builtin_datasets()


def setup_tool_logger(name: str = "d2ext") -> logging.Logger:
    setup_logger(name="detectron2")
    return setup_logger(name=name)
