"""The layer order of docs/architecture.md holds: no import runs up a layer, none runs round a circle, the
inference vocabulary imports nothing from vlaser, and no function is over 60 lines."""

import ast

import import_graph as g


def test_no_import_runs_up_a_layer():
    assert g.upward(g.graph()) == []


def test_no_import_circle():
    assert g.circles(g.graph()) == []


def test_the_vocabulary_is_a_leaf():
    assert g.graph()["vlaser.inference.types"] == set()


def test_every_module_is_in_a_layer_the_doc_names():
    doc = (g.SRC.parent / "docs" / "architecture.md").read_text()
    for name, _ in g.LAYERS:
        assert f"\n  {name} " in doc, f"layer {name} is not in docs/architecture.md's diagram"
    for module in g.graph():
        g.layer(module)  # raises for a module in no layer


def test_no_function_over_60_lines():
    assert g.long_functions() == []


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path):
    """The checks themselves fail on a planted upward import and a planted circle."""
    pkg = tmp_path / "vlaser"
    (pkg / "model").mkdir(parents=True)
    (pkg / "inference").mkdir()
    for init in (pkg, pkg / "model", pkg / "inference"):
        (init / "__init__.py").write_text("")
    (pkg / "model" / "a.py").write_text("def f():\n    from vlaser.inference.b import g\n")
    (pkg / "inference" / "b.py").write_text("from vlaser.model import a\n")
    (pkg / "inference" / "c.py").write_text("from . import b\nfrom .d import x\n")
    (pkg / "inference" / "d.py").write_text("import vlaser.inference.c\n")
    edges = g.graph(tmp_path)
    assert g.upward(edges) == [("vlaser.model.a", "vlaser.inference.b")]
    assert g.circles(edges) == [["vlaser.inference.b", "vlaser.model.a"], ["vlaser.inference.c", "vlaser.inference.d"]]


def test_the_function_check_counts_every_line(tmp_path):
    (tmp_path / "vlaser").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    (tmp_path / "vlaser" / "m.py").write_text(f"def ok():\n{body}\n\ndef long():\n{body}    x = 1\n")
    ast.parse((tmp_path / "vlaser" / "m.py").read_text())
    assert g.long_functions(60, tmp_path) == [("vlaser.m", "long", 61)]


def test_only_the_seed_api_generates_with_transformers():
    """One generation path: model.chat / batch_chat (transformers' generate, kept for code written against the
    seed) are called by nothing in vlaser; every path goes through inference.Engine."""
    callers = []
    for module, path in g.modules().items():
        if module == "vlaser.model.chat":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "chat", "batch_chat", "generate_answers", "generate_text") and not (
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
                callers.append(f"{module}:{node.lineno} .{node.func.attr}(")
    assert callers == []


def test_serve_leaves_image_tags_to_the_prepare_step():
    """Serve hands each message's parts to the prepare step (``tag_parts``) and lays out no images itself with
    the template's layouts."""
    users = []
    for module, path in g.modules().items():
        if module.startswith("vlaser.serve."):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "vlaser.model.template":
                    users += [f"{module}:{node.lineno} {a.name}" for a in node.names]
    assert users == []


def test_each_setting_has_one_internal_name():
    """The tile limit is ``max_tiles`` and the new-token count ``max_new_tokens`` everywhere but where they enter
    or leave vlaser (flags, request bodies, a remote server's payload, the checkpoint's config, the seed's tiling)."""
    assert g.outside_names() == {}


def test_the_name_check_catches_an_outside_name(tmp_path):
    (tmp_path / "vlaser" / "serve").mkdir(parents=True)
    (tmp_path / "vlaser" / "serve" / "messages.py").write_text("def f(body):\n    return body.max_num\n")
    (tmp_path / "vlaser" / "serve" / "schema.py").write_text("max_num = 1\n")  # the request body's own name
    assert g.outside_names(tmp_path) == {"vlaser.serve.messages": {"max_num"}}


def test_each_setting_is_handled_by_at_most_three_modules_under_one_name():
    """On each setting's way from a command line to the engine (``import_graph.SETTINGS``, traced by hand), at most
    three modules besides its boundaries and the vocabulary handle it, all under its one internal name."""
    for label, path, pattern in g.SETTINGS:
        handling = g.sorted_by_class(path, pattern)["handling"]
        internal = g.INTERNAL["tiles" if pattern == g.TILE_NAMES else "tokens"]
        assert len(handling) <= 3 and set().union(*handling.values()) == {internal}, (label, handling)
