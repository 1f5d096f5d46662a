"""The layout shows the architecture: no import cycles among the project's modules; the installed packages (xclip_jax,
input_pipeline) reach nothing that only the repository has (configs/, tests/, benchmarks/, ../shared); pyproject
installs exactly their package folders.

Static: the sources are parsed, never imported. Each checker is also run on a small broken tree, so that each check
is seen to fail.
"""

import ast
import collections
import fnmatch
import os
import pathlib
import re
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
INSTALLED = ("xclip_jax", "input_pipeline")
PROJECT = (*INSTALLED, "configs", "benchmarks")
REPOSITORY_ONLY = ("configs", "tests", "benchmarks")
# A string that is a path to ../shared, or part of one: "shared" alone, or with a path separator beside it.
_SHARED_PATH = re.compile(r"(^|[/\\])shared([/\\]|$)")


def _modules(root: pathlib.Path, packages) -> dict[str, pathlib.Path]:
  """{dotted module name: source file} of every .py file under the package folders."""
  modules = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = path.relative_to(root).with_suffix("").parts
      if any(part.startswith(".") or part == "__pycache__" for part in parts):
        continue
      modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _imports(name: str, path: pathlib.Path, modules) -> list[tuple[str, int]]:
  """(imported name, line) for every import in the file, at module level or inside functions.

  `from pkg import mod` names the module pkg.mod when that is a module, else pkg; relative imports are made
  absolute; `importlib.import_module("constant")` counts as an import.
  """
  package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.extend((alias.name, node.lineno) for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.append((full if full in modules else base, node.lineno))
    elif (
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Attribute | ast.Name)
      and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
      and node.args
      and isinstance(node.args[0], ast.Constant)
      and isinstance(node.args[0].value, str)
    ):
      found.append((node.args[0].value, node.lineno))
  return found


def _resolve(imported: str, modules) -> str | None:
  """The project module that `imported` runs: the longest prefix of it that is a module."""
  parts = imported.split(".")
  for end in range(len(parts), 0, -1):
    if ".".join(parts[:end]) in modules:
      return ".".join(parts[:end])
  return None


def import_graph(root: pathlib.Path, packages) -> dict[str, dict[str, int]]:
  """{module: {imported project module: first line}}."""
  modules = _modules(root, packages)
  graph = {}
  for name, path in modules.items():
    edges = graph[name] = {}
    for imported, line in _imports(name, path, modules):
      target = _resolve(imported, modules)
      if target is not None and target != name:
        edges.setdefault(target, line)
  return graph


def find_cycles(root: pathlib.Path, packages) -> list[list[str]]:
  """One import cycle per strongly connected group of modules, as [a, b, ..., a] (shortest through its first module)."""
  graph = import_graph(root, packages)
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def connect(node):  # Tarjan's strongly connected components
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for successor in graph[node]:
      if successor not in index:
        connect(successor)
        low[node] = min(low[node], low[successor])
      elif successor in on_stack:
        low[node] = min(low[node], index[successor])
    if low[node] == index[node]:
      group = set()
      while node not in group:
        group.add(stack.pop())
      on_stack.difference_update(group)
      if len(group) > 1:
        groups.append(group)

  for node in sorted(graph):
    if node not in index:
      connect(node)
  cycles = []
  for group in groups:
    start = min(group)
    previous, queue = {start: None}, collections.deque([start])
    while queue:  # breadth first inside the group, until a module that imports the start
      node = queue.popleft()
      if start in graph[node]:
        break
      for successor in sorted(graph[node]):
        if successor in group and successor not in previous:
          previous[successor] = node
          queue.append(successor)
    path = []
    while node is not None:
      path.append(node)
      node = previous[node]
    cycles.append([*path[::-1], start])
  return sorted(cycles)


def describe_cycle(root: pathlib.Path, packages, cycle: list[str]) -> str:
  """'import cycle: a:12 -> b:3 -> a': module a imports b at its line 12, b imports a at its line 3."""
  graph = import_graph(root, packages)
  return "import cycle: " + " -> ".join([*(f"{a}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:])), cycle[-1]])


def repository_reach(root: pathlib.Path, packages) -> list[str]:
  """'module:line: why' for each import of configs/tests/benchmarks and each path string to shared in `packages`."""
  modules = _modules(root, packages)
  problems = []
  for name, path in modules.items():
    for imported, line in _imports(name, path, modules):
      if imported.split(".")[0] in REPOSITORY_ONLY:
        problems.append(f"{name}:{line}: imports {imported}")
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
      id(node.body[0].value)
      for node in ast.walk(tree)
      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
      and node.body
      and isinstance(node.body[0], ast.Expr)
      and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _SHARED_PATH.search(node.value)
      ):
        problems.append(f"{name}:{node.lineno}: builds a path to shared ({node.value!r})")
  return sorted(problems, key=lambda problem: (problem.split(":")[0], int(problem.split(":")[1])))


def package_list_problems(root: pathlib.Path, packages) -> tuple[list[str], list[str]]:
  """(package folders the pyproject's find does not include, folders it includes that are not package folders).

  The package folders are those with an __init__.py under `packages`. The folders are chosen as setuptools does
  for `[tool.setuptools.packages.find]`: every folder (namespace packages included, as is its default) whose dotted
  name matches an include pattern and no exclude pattern.
  """
  find = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
  where = root / find.get("where", ["."])[0]
  include, exclude = find.get("include", ["*"]), find.get("exclude", [])
  chosen, expected = set(), set()
  for folder, subfolders, files in os.walk(where):
    subfolders[:] = [sub for sub in subfolders if "." not in sub and sub != "__pycache__"]
    name = ".".join(pathlib.Path(folder).relative_to(where).parts)
    if not name:
      continue
    if any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude):
      chosen.add(name)
    if "__init__.py" in files and name.split(".")[0] in packages:
      expected.add(name)
  return sorted(expected - chosen), sorted(chosen - expected)


def _write_tree(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
  for relative, text in files.items():
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_text(text)
  return root


def test_no_import_cycles_among_the_projects_modules():
  cycles = find_cycles(REPO, PROJECT)
  assert not cycles, "\n".join(describe_cycle(REPO, PROJECT, cycle) for cycle in cycles)


def test_the_cycle_check_finds_and_names_a_cycle_through_any_kind_of_import(tmp_path):
  # a -> b by `from pkg import b`, b -> c by a relative import inside a function, c -> a by `import pkg.a`; d -> e by
  # importlib. `from pkg import b` is an import of pkg.b, not of pkg, which imports pkg.a: no cycle through pkg.
  root = _write_tree(
    tmp_path,
    {
      "pkg/__init__.py": "from pkg.a import NAME\n",
      "pkg/a.py": "import os\nfrom pkg import b\nNAME = 1\n",
      "pkg/b.py": "def f():\n  from . import c\n  return c\n",
      "pkg/c.py": '"""Doc."""\n\nimport pkg.a\n',
      "other/__init__.py": "",
      "other/d.py": "import importlib\nimportlib.import_module('other.e')\n",
      "other/e.py": "from other.d import x\n",
    },
  )
  cycles = find_cycles(root, ["pkg", "other"])
  assert cycles == [["other.d", "other.e", "other.d"], ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
  assert describe_cycle(root, ["pkg"], cycles[1]) == "import cycle: pkg.a:2 -> pkg.b:2 -> pkg.c:3 -> pkg.a"
  (root / "pkg" / "b.py").write_text("")
  assert find_cycles(root, ["pkg"]) == []


def test_installed_modules_reach_neither_repository_folders_nor_shared():
  problems = repository_reach(REPO, INSTALLED)
  assert not problems, "\n".join(problems)


def test_the_reach_check_names_the_module_and_line_of_each_import_and_shared_path(tmp_path):
  root = _write_tree(
    tmp_path,
    {
      "pkg/__init__.py": '"""Weights shared across the batch; see ../shared in the README."""\n',
      "pkg/a.py": (
        "import pathlib\n"
        "from configs import common\n"
        "def f():\n"
        "  import tests.fixtures.tiny\n"
        "  from benchmarks import model\n"
        "GOLDEN = pathlib.Path(__file__).parents[2] / 'shared' / 'golden'\n"
        "LABELS = f'{GOLDEN}/../shared/labels'\n"
        "NOTE = 'a shared tokenizer'\n"
      ),
    },
  )
  assert repository_reach(root, ["pkg"]) == [
    "pkg.a:2: imports configs",
    "pkg.a:4: imports tests.fixtures.tiny",
    "pkg.a:5: imports benchmarks",
    "pkg.a:6: builds a path to shared ('shared')",
    "pkg.a:7: builds a path to shared ('/../shared/labels')",
  ]


def test_pyproject_installs_exactly_the_package_folders_of_the_installed_packages():
  missing, extra = package_list_problems(REPO, INSTALLED)
  assert not missing and not extra, f"pyproject misses the package folders {missing} and installs the folders {extra}"


def test_the_package_list_check_reports_missing_and_extra_packages(tmp_path):
  root = _write_tree(
    tmp_path,
    {
      "pkg/__init__.py": "",
      "pkg/sub/__init__.py": "",
      "pkg/assets/vocab.txt": "",  # no __init__.py: a namespace package if a pattern takes it
      "configs/__init__.py": "",
    },
  )
  (root / "pyproject.toml").write_text('[tool.setuptools.packages.find]\ninclude = ["pkg", "configs"]\n')
  assert package_list_problems(root, ["pkg"]) == (["pkg.sub"], ["configs"])
  (root / "pyproject.toml").write_text('[tool.setuptools.packages.find]\ninclude = ["pkg", "pkg.*"]\n')
  assert package_list_problems(root, ["pkg"]) == ([], ["pkg.assets"])
