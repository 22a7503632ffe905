"""The package's top-level names: every export is the documented object, whatever was imported before."""

import inspect
import subprocess
import sys

import breakascene


def test_every_export_is_the_named_object_even_after_its_module_is_imported():
    import breakascene.cli  # noqa: F401 - imports generation, editing, exports lazily per command
    import breakascene.inference.editing  # noqa: F401
    import breakascene.inference.exports  # noqa: F401
    import breakascene.inference.generation  # noqa: F401

    for name in breakascene.__all__:
        value = getattr(breakascene, name)
        assert not inspect.ismodule(value), f"breakascene.{name} is a module, not the {name} it documents"
        assert getattr(value, "__name__", name) == name


def test_import_is_light():
    code = "import sys, breakascene; print('diffusers' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
