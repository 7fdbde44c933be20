"""The front door: the public names, exactly."""

import ast
from pathlib import Path

import sidecar

EXPECTED = {
    "CheckpointConfig", "CheckpointError", "CheckpointEvent", "CheckpointFactory",
    "CheckpointManager", "CheckpointRefused", "CheckpointTimeout", "CheckpointUnavailable",
    "Checkpointer", "CircuitOpen", "IntegrityError", "InvalidIdentifier", "LeaseHeld",
    "LeaseLost", "Progress", "ResumableRun", "ResumeView", "RunContext", "SectionTooLarge",
    "SerializationError", "SyncCheckpointManager", "SyncCheckpointer", "SyncResumableRun",
    "__version__",
}  # fmt: skip


def test_all_is_a_literal_list_of_the_public_names() -> None:
    tree = ast.parse(Path(sidecar.__file__).read_text())
    literal = next(
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        )
    )  # fmt: skip
    assert isinstance(literal, ast.List)
    assert {ast.literal_eval(e) for e in literal.elts} == EXPECTED
    assert set(sidecar.__all__) == EXPECTED


def test_every_exported_name_resolves() -> None:
    for name in sidecar.__all__:
        assert getattr(sidecar, name) is not None


def test_error_hierarchy() -> None:
    for name in ("InvalidIdentifier", "SectionTooLarge", "SerializationError",
                 "CheckpointUnavailable", "CheckpointTimeout", "LeaseHeld", "LeaseLost",
                 "IntegrityError", "CheckpointRefused", "CircuitOpen"):  # fmt: skip
        assert issubclass(getattr(sidecar, name), sidecar.CheckpointError)
    for name in ("CheckpointRefused", "CircuitOpen"):  # strict mode raises them as outages
        assert issubclass(getattr(sidecar, name), sidecar.CheckpointUnavailable)
    assert issubclass(sidecar.InvalidIdentifier, ValueError)


def test_library_imports_no_opentelemetry_sdk() -> None:
    """The library depends on opentelemetry-api only; the SDK belongs to applications."""
    root = Path(sidecar.__file__).parent
    library = [*root.glob("*.py"), *root.glob("core/*.py"), *root.glob("sync/*.py")]
    for path in library:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.col_offset == 0:
                assert not node.module.startswith("opentelemetry.sdk"), path
