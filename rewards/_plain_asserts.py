"""Assert tests compare plain data: the sandbox server's defence against results that lie about equality.

A program can return an object whose `__eq__` always says True (or `__ne__`, `__bool__`, `__lt__`,
`__contains__`, or an `int` subclass that does the same); `assert candidate(1, 2) == 3` would then pass
without computing anything. So every `assert` in the test code is rewritten before the program runs:

* operands of value comparisons (`==  !=  <  <=  >  >=  in  not in`), operands of `not`, `and`, `or`
  and the condition of `a if c else b` go through `plain()`;
* the asserted value itself goes through `truth()`.

`plain()` reduces a value to builtin data (None, bool, int, float, complex, str, bytes, and lists,
tuples, dicts, sets and frozensets of those); subclasses of these are copied into the base type through
the base type's own C methods, so no method of the subclass runs. Any other object (a class of the
program, a generator, a Fraction) raises TypeError, which fails that assert. Comparisons between
builtin data cannot be overridden by a program, so the verdict is the data's. Identity tests (`is`) are
left alone: they call no method of the operands.

The helpers are baked into the compiled test code as constants (swapped in for placeholder strings after
`compile`), and they captured every builtin they use when this module was loaded: no name that a program
can rebind (a global, `builtins.type`, this module's attributes) is looked up while a test runs.

Not covered (see rewards/sandbox.py): lies that a builtin turns into plain data before any comparison
sees them (`len(x)` trusts `__len__`, `float(x)` trusts `__float__`, `isinstance` trusts `__class__`,
arithmetic on a program object), and harness-level attacks (walking frames or `gc` to patch the test code).

stdlib only: this file is prepended to rewards/_sandbox_server.py and runs under /usr/bin/python3.
"""

import ast
import os
import types
import warnings

_PLAIN_MARK = "rz-plain-" + os.urandom(8).hex()  # placeholders the test source cannot predict
_TRUTH_MARK = "rz-truth-" + os.urandom(8).hex()
_VALUE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)


def _make_helpers():
    """(plain, truth), closing over the builtins they use as they are now (a program may rebind them later)."""
    _type, _issubclass, _bool, _list, _tuple, _set, _frozenset = type, issubclass, bool, list, tuple, set, frozenset
    _TypeError, _slice = TypeError, slice(None)
    # exact scalar types by id: a metaclass can fake ==/hash of a class, never its id
    scalars = {id(t) for t in (type(None), bool, int, float, complex, str, bytes)}
    # subclass -> base copy through the base type's C method (returns an exact base instance)
    copies = ((int, int.__pos__), (float, float.__pos__), (complex, complex.__pos__),
              (str, str.__str__), (bytes, lambda b: bytes.__getitem__(b, _slice)))
    list_iter, tuple_iter, set_iter, frozenset_iter, dict_items = (
        list.__iter__, tuple.__iter__, set.__iter__, frozenset.__iter__, dict.items)

    def plain(x):
        t = _type(x)
        if id(t) in scalars:
            return x
        if _issubclass(t, list):
            return [plain(e) for e in list_iter(x)]
        if _issubclass(t, tuple):
            return _tuple([plain(e) for e in tuple_iter(x)])
        if _issubclass(t, dict):
            return {plain(k): plain(v) for k, v in dict_items(x)}
        if _issubclass(t, set):
            return _set([plain(e) for e in set_iter(x)])
        if _issubclass(t, frozenset):
            return _frozenset([plain(e) for e in frozenset_iter(x)])
        for base, copy in copies:
            if _issubclass(t, base):
                return copy(x)
        if t is _type:  # a class (from `type(x) == int`); classes with a custom metaclass are refused
            return x
        raise _TypeError("assert compared a value that is not builtin data (only None, bool, numbers, str, bytes, "
                         "list, tuple, dict, set and frozenset are compared)")

    def truth(x):
        return x if x is True or x is False else _bool(plain(x))

    return plain, truth


_HELPERS = dict(zip((_PLAIN_MARK, _TRUTH_MARK), _make_helpers()))


def _wrap(mark, node):
    return ast.copy_location(ast.Call(func=ast.Constant(mark), args=[node], keywords=[]), node)


class _Operands(ast.NodeTransformer):
    """Inside one assert: every value a comparison or truth test looks at goes through plain()."""

    def visit_Compare(self, node):
        self.generic_visit(node)
        if any(isinstance(op, _VALUE_OPS) for op in node.ops):
            node.left = _wrap(_PLAIN_MARK, node.left)
            node.comparators = [_wrap(_PLAIN_MARK, c) for c in node.comparators]
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = _wrap(_PLAIN_MARK, node.operand)
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        node.values = [_wrap(_PLAIN_MARK, v) for v in node.values]
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        node.test = _wrap(_PLAIN_MARK, node.test)
        return node


class _Asserts(ast.NodeTransformer):
    def visit_Assert(self, node):
        node.test = _wrap(_TRUTH_MARK, _Operands().visit(node.test))
        return node


def _bind(code):
    """`code` with the placeholder constants replaced by the helpers, in nested code objects too."""
    consts = tuple(_bind(c) if isinstance(c, types.CodeType) else _HELPERS.get(c, c) if type(c) is str else c
                   for c in code.co_consts)
    return code.replace(co_consts=consts)


def compile_test_unbound(src):
    """One top-level statement of test code compiled with placeholders where the helpers go (marshal-able:
    the sandbox server compiles once and sends it to a forked run, which binds it with `_bind`)."""
    tree = _Asserts().visit(ast.parse(src, "<test>", "exec"))
    ast.fix_missing_locations(tree)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'str' object is not callable": the placeholders, swapped by _bind
        return compile(tree, "<test>", "exec")


def compile_test(src):
    """Compile one top-level statement of test code with its asserts comparing plain data."""
    return _bind(compile_test_unbound(src))
