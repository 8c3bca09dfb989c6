"""BFCL's model registry, without importing every vendor SDK to read it.

bfcl-eval's ``constants/model_config.py`` is a table (``MODEL_CONFIG_MAPPING``: name -> ``ModelConfig``)
whose rows name a handler class. To do so it imports all ~60 handler modules, and with them anthropic,
cohere, qwen_agent, google-genai, mistralai, boto3, ...: 5-9 s before a run can send its first request,
paid again by ``eval_runner``, which imports the table too.

Here bfcl-eval's own file is executed, unchanged, with its handler imports deferred: each handler name
becomes a :class:`HandlerRef` that imports its module when first called or resolved. The result is
installed as ``bfcl_eval.constants.model_config``, so bfcl-eval's generation and checker code read this
same table. Nothing is copied: a new bfcl-eval version brings its own rows.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

REGISTRY_MODULE = "bfcl_eval.constants.model_config"
HANDLER_PACKAGE = "bfcl_eval.model_handler."

_install_lock = threading.Lock()


@dataclass(frozen=True)
class HandlerRef:
    """A handler class named by the registry, imported on first use."""

    module: str
    name: str

    def resolve(self) -> type:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """What the registry's users do with a handler (upstream's ``build_handler``): build one."""
        return self.resolve()(*args, **kwargs)


class _DeferredHandlers:
    """Stands for a handler module in ``from <module> import <Handler>``: every name is a HandlerRef."""

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str) -> HandlerRef:
        return HandlerRef(self._module, name)


def _deferring_import(name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (),
                      level: int = 0) -> Any:
    if level == 0 and fromlist and name.startswith(HANDLER_PACKAGE):
        return _DeferredHandlers(name)
    return builtins.__import__(name, globals_, locals_, fromlist, level)


def registry_module() -> ModuleType:
    """``bfcl_eval.constants.model_config``, installed with deferred handlers unless already imported."""
    with _install_lock:
        module = sys.modules.get(REGISTRY_MODULE)
        if module is None:
            module = _install()
        return module


def _install() -> ModuleType:
    spec = importlib.util.find_spec(REGISTRY_MODULE)
    if spec is None or spec.loader is None or spec.origin is None:
        raise ModuleNotFoundError(REGISTRY_MODULE)
    source = spec.loader.get_source(REGISTRY_MODULE)  # type: ignore[attr-defined]
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = {**vars(builtins), "__import__": _deferring_import}
    sys.modules[REGISTRY_MODULE] = module
    try:
        exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 - bfcl-eval's own file
    except BaseException:
        del sys.modules[REGISTRY_MODULE]
        raise
    return module


def handler_class(config: Any) -> type:
    """The class of a registry row's handler, imported now (only that handler's module)."""
    handler = config.model_handler
    return handler.resolve() if isinstance(handler, HandlerRef) else handler


def handler_name(config: Any) -> str:
    handler = config.model_handler
    return handler.name if isinstance(handler, HandlerRef) else handler.__name__
