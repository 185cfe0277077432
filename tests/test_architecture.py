"""The shape of the code that tests of behaviour would not notice."""

import ast
from pathlib import Path

import qpbot_serving


def _is_write_side(module: str) -> bool:
    """The asset graph and Dagster (with its integrations, `dagster_aws` and the like): the
    read side runs without them, so what both sides share lives in qpbot_serving."""
    top = module.split(".")[0]
    return top in ("qpbot_assets", "dagster") or top.startswith("dagster_")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an import statement names, at module level or inside a function."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
        elif (  # importlib.import_module("...") and __import__("...") with a literal name
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append((node.lineno, node.args[0].value))
    return names


def test_the_serving_package_never_imports_the_asset_graph_or_dagster():
    package = Path(qpbot_serving.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 10
    offending = [
        f"{path.relative_to(package.parent)}:{line} imports {name}"
        for path in modules
        for line, name in _imported_modules(ast.parse(path.read_text(), str(path)))
        if _is_write_side(name)
    ]
    assert offending == []


def test_the_check_sees_lazy_imports():
    source = "def f():\n    import dagster as dg\n    from qpbot_assets.runtime.runs import x\n"
    assert [name for _, name in _imported_modules(ast.parse(source))] == [
        "dagster",
        "qpbot_assets.runtime.runs",
    ]
