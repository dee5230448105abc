"""The public API is explicit: everything in __all__ exists and has a docstring."""

import inspect

import phalanx_aio
import phalanx_aio.batteries
import phalanx_aio.chaos
import phalanx_aio.commands
import phalanx_aio.core
import phalanx_aio.kv
import phalanx_aio.node
import phalanx_aio.observability
import phalanx_aio.sim


def test_all_names_exist_and_are_documented() -> None:
    modules = (
        phalanx_aio,
        phalanx_aio.batteries,
        phalanx_aio.core,
        phalanx_aio.sim,
        phalanx_aio.kv,
        phalanx_aio.chaos,
        phalanx_aio.commands,
        phalanx_aio.node,
        phalanx_aio.observability,
    )
    for mod in modules:
        assert len(set(mod.__all__)) == len(mod.__all__)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if name == "__version__":
                assert isinstance(obj, str)
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{mod.__name__}.{name} has no docstring"


def test_no_private_names_exported() -> None:
    for name in phalanx_aio.__all__:
        assert not name.startswith("_") or name == "__version__"
