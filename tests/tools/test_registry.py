import re
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel

from backend.tools.base import Tool, ToolContext
from backend.tools.builtin.calculator import Calculate
from backend.tools.registry import ToolRegistry, TurnTools, build_registry, default_registry, load_registry
from tests.tools.sample_registry import Echo

BUILTIN_NAMES = ["get_current_time", "calculate", "search_help_docs", "generate_report", "ask_user"]


def test_register_get_iterate() -> None:
    echo, other = Echo("echo"), Echo("other")
    registry = ToolRegistry([echo])
    registry.register(other)
    assert len(registry) == 2
    assert registry.get("echo") is echo
    assert registry.get("missing") is None
    assert "other" in registry and "missing" not in registry
    assert list(registry) == [echo, other]
    assert [s["function"]["name"] for s in registry.schemas()] == ["echo", "other"]


def test_duplicate_name_is_rejected() -> None:
    registry = ToolRegistry([Echo("echo")])
    with pytest.raises(ValueError, match="duplicate tool name 'echo'"):
        registry.register(Echo("echo"))
    assert len(registry) == 1


@pytest.mark.parametrize("name", ["", "has space", "dotted.name", "ünicode", "x" * 65, "trailing\n", "a/b"])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid tool name"):
        ToolRegistry().register(Echo(name))


@pytest.mark.parametrize("name", ["a", "get_weather", "search-web", "X" * 64, "v2"])
def test_valid_names(name: str) -> None:
    assert ToolRegistry([Echo(name)]).get(name) is not None


def test_only_tools_can_be_registered() -> None:
    with pytest.raises(TypeError):
        ToolRegistry().register("echo")  # type: ignore[arg-type]


class NoArgs(BaseModel):
    pass


class Undescribed(Tool[NoArgs]):
    name = "undescribed"
    args_model = NoArgs

    async def execute(self, args: NoArgs, ctx: ToolContext) -> None:
        return None


def test_a_tool_without_a_schema_is_rejected_at_registration() -> None:
    with pytest.raises(ValueError, match="has no valid schema"):
        ToolRegistry().register(Undescribed())


def test_schemas_are_cached_until_the_registry_changes() -> None:
    registry = ToolRegistry([Echo("one")])
    first = registry.schemas()
    assert registry.schemas() == first
    first.clear()  # the returned list is a copy
    assert len(registry.schemas()) == 1

    version = registry.version
    assert version == registry.version
    registry.register(Echo("two"))
    assert registry.version != version
    assert len(registry.schemas()) == 2


def test_version_depends_only_on_the_schemas() -> None:
    assert ToolRegistry([Echo("one")]).version == ToolRegistry([Echo("one")]).version
    assert ToolRegistry([Echo("one")]).version != ToolRegistry([Echo("two")]).version
    assert ToolRegistry().version == ToolRegistry().version


# --- load_registry -----------------------------------------------------------------------------------------


def test_load_registry_attribute() -> None:
    registry = load_registry("tests.tools.sample_registry:registry")
    assert [tool.name for tool in registry] == ["echo"]


def test_load_registry_factory() -> None:
    assert [tool.name for tool in load_registry("tests.tools.sample_registry:make_registry")] == ["echo_made"]


def test_load_registry_dotted_attribute() -> None:
    assert [tool.name for tool in load_registry("tests.tools.sample_registry:Holder.registry")] == ["echo_held"]


BAD_SPECS = ["", "tests.tools.sample_registry", ":registry", "tests.tools.sample_registry:", " : "]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_load_registry_bad_spec(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape("expected 'package.module:attribute'")):
        load_registry(spec)


@pytest.mark.parametrize("spec", ["tests.tools.no_such_module:registry", "no_such_package.tools:registry"])
def test_load_registry_missing_module(spec: str) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_registry(spec)


def test_load_registry_missing_attribute() -> None:
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        load_registry("tests.tools.sample_registry:nothing")


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("not_a_registry", "expected a ToolRegistry or a callable, got int"),
        ("make_list", r"make_list\(\) returned list, not a ToolRegistry"),
        ("broken_factory", "factory exploded"),
    ],
)
def test_load_registry_wrong_type(attribute: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_registry(f"tests.tools.sample_registry:{attribute}")


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_load_registry_module_with_a_missing_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "plugin_missing_dep", "import no_such_dependency_xyz\nregistry = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"importing 'plugin_missing_dep' failed.*no_such_dependency_xyz"):
        load_registry("plugin_missing_dep:registry")


def test_load_registry_module_that_fails_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "plugin_raises", "raise RuntimeError('bad plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"importing 'plugin_raises' failed.*bad plugin"):
        load_registry("plugin_raises:registry")


def test_load_registry_from_a_temporary_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(
        tmp_path,
        "plugin_ok",
        """
        from backend.tools.registry import ToolRegistry
        from tests.tools.sample_registry import Echo

        def tools():
            return ToolRegistry([Echo("from_plugin")])
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [tool.name for tool in load_registry("plugin_ok:tools")] == ["from_plugin"]


# --- default and configured registries ---------------------------------------------------------------------


def test_default_registry_has_the_builtins() -> None:
    assert [tool.name for tool in default_registry()] == BUILTIN_NAMES
    assert default_registry() is not default_registry()


def test_build_registry_merges_configured_registries() -> None:
    assert [tool.name for tool in build_registry([])] == BUILTIN_NAMES
    registry = build_registry(["tests.tools.sample_registry:registry", "tests.tools.sample_registry:make_registry"])
    assert [tool.name for tool in registry] == [*BUILTIN_NAMES, "echo", "echo_made"]


def test_build_registry_rejects_a_clash_with_a_builtin() -> None:
    with pytest.raises(ValueError, match=r"make_clashing_registry.*duplicate tool name 'calculate'"):
        build_registry(["tests.tools.sample_registry:make_clashing_registry"])


def test_build_registry_rejects_a_clash_between_registries() -> None:
    spec = "tests.tools.sample_registry:registry"
    with pytest.raises(ValueError, match="duplicate tool name 'echo'"):
        build_registry([spec, spec])


def test_build_registry_reports_a_bad_spec() -> None:
    with pytest.raises(ValueError, match="not found"):
        build_registry(["tests.tools.no_such_module:registry"])


def test_remove_takes_a_tool_out_and_refreshes_the_schemas() -> None:
    registry = ToolRegistry([Echo("echo"), Echo("other")])
    version = registry.version
    assert len(registry.schemas()) == 2
    registry.remove("echo")
    registry.remove("missing")  # nothing to remove: no error
    assert "echo" not in registry and registry.get("echo") is None
    assert [s["function"]["name"] for s in registry.schemas()] == ["other"]
    assert registry.version != version
    registry.register(Echo("echo"))  # the name is free again
    assert [s["function"]["name"] for s in registry.schemas()] == ["other", "echo"]


def test_a_turns_tools_are_the_registrys_then_the_sessions_own_and_the_registry_wins_a_name() -> None:
    class Mine(Calculate):
        name = "mine__calc"

    class Shadow(Calculate):
        description = "a session tool trying to take a built-in's name"

    shared = default_registry()
    own_tool, shadow = Mine(), Shadow()
    tools = TurnTools(shared, [own_tool, shadow])
    assert [s["function"]["name"] for s in tools.schemas()] == [t.name for t in shared] + ["mine__calc"]
    assert tools.get("mine__calc") is own_tool
    assert tools.get("calculate") is shared.get("calculate")
    assert tools.get("nope") is None
    assert "mine__calc" not in shared  # the registry of the process is left as it was
