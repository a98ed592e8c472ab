"""Import layering of mmvit_plugin: no cycles between modules or sub-packages; a pure core."""
import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / 'mmvit_plugin'
FRAMEWORKS = ('mmengine', 'mmcv', 'mmpretrain', 'mmaction')


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: Path, modules: Set[str] = frozenset()) -> List[str]:
    """Every module a file imports, function-level imports included, as absolute names.

    ``from pkg import mod`` counts as importing ``pkg.mod`` only when every imported name is
    one of ``modules``; otherwise it imports ``pkg`` itself."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            named = [f'{target}.{alias.name}' for alias in node.names]
            found += named if all(n in modules for n in named) else [target]
    return found


def plugin_graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in imports_of(path, set(files)) if t in files and t != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return result


def subpackage(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_scan_sees_function_level_and_relative_imports():
    graph = plugin_graph()
    assert 'mmvit_plugin.core.arch' in graph['mmvit_plugin.models.mvitv2']
    assert 'mmvit_plugin.registry' in graph['mmvit_plugin.models.mvitv2']
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_cycle_between_modules():
    assert cycles(plugin_graph()) == []


def test_no_import_cycle_between_subpackages():
    graph = plugin_graph()
    packages: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        if module == 'mmvit_plugin':  # the top-level __init__ imports everything on purpose
            continue
        source = subpackage(module)
        packages.setdefault(source, set()).update(
            subpackage(t) for t in targets if subpackage(t) not in (source, 'mmvit_plugin'))
    assert cycles(packages) == []


def test_core_imports_no_framework_directly_or_through_the_plugin():
    graph = plugin_graph()
    files = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    for module in (m for m in graph if m.startswith('mmvit_plugin.core')):
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            for target in imports_of(files[current], set(files)):
                assert not target.startswith(FRAMEWORKS), \
                    f'{module} reaches {target} through {current}'
            todo += graph[current]
