"""Parsing, printing and verifying tilefuse IR as MLIR text.

Errors are turned into `IRError`s that name the file, line and column and
say what is wrong, so a command-line tool can print them without a traceback.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator

from xdsl.context import Context
from xdsl.dialects import arith, builtin, func, math, scf
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, Operation, SSAValue
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import DiagnosticException, ParseError, VerifyException

from . import einsum
from .einsum import Einsum
from .tile import Tile


class IRError(Exception):
    """Malformed or invalid IR: the message names the line when one is known."""


def functions(module: ModuleOp) -> Iterator[func.FuncOp]:
    """The `func.func`s of a module, in order (what passes over `ein` rewrite)."""
    return (op for op in module.ops if isinstance(op, func.FuncOp))


def parameter_args(fn: func.FuncOp) -> list[BlockArgument]:
    """The arguments of `fn` that are module parameters or buffers (`ein.param`, set by the import),
    in order."""
    attrs = fn.arg_attrs.data if fn.arg_attrs is not None else ()
    return [arg for arg, a in zip(fn.body.block.args, attrs) if "ein.param" in a.data]


def computed_from_parameters(value: SSAValue, params: set[SSAValue]) -> bool:
    """Whether `value` is a parameter argument (of `params`), or computed from them alone by maps,
    views and concatenations (a folded norm weight, stacked weights): what the runtime computes once
    and reuses while the parameters stand (`runtime._parameter_derived`)."""
    if isinstance(value, BlockArgument):
        return value in params
    owner = value.owner
    if not isinstance(owner, (einsum.MapOp, einsum.ViewOp, einsum.ConcatOp)):
        return False
    return all(computed_from_parameters(v, params) for v in owner.operands)


def make_context() -> Context:
    """An xDSL context with every dialect tilefuse IR may contain."""
    ctx = Context()
    for dialect in (builtin.Builtin, func.Func, arith.Arith, math.Math, scf.Scf, Einsum, Tile):
        ctx.load_dialect(dialect)
    return ctx


_SSA_NAME = re.compile(r"%[\w$.-]+")
_COMMENT = re.compile(r"//[^\n]*")
_UNREGISTERED = re.compile(r"^Operation (?P<name>\S+) is not registered$")
_UNDEFINED = re.compile(r"^values used but not defined: \[(?P<names>[^\]]*)\]$")


def parse_module(text: str, filename: str = "<input>") -> ModuleOp:
    """Parse MLIR text into a verified module; raises IRError on bad input.

    A parse error's message is one line, `file:line:col: error: what`, located at
    the token at fault (an unknown op's name, an undefined value's first use) and
    saying when the input ends too early, as a truncated file does.
    """
    if not _COMMENT.sub("", text).strip():
        first = next((line.strip() for line in text.splitlines() if line.strip()), None)
        if first is not None:  # a dump's stub of a stage that did not run says why in its comment
            raise IRError(f"{filename}: error: no module, only comments; the first: {first[:160]}")
        raise IRError(f"{filename}: error: empty input: expected a module (builtin.module {{ ... }})")
    _check_string_literals(text, filename)
    try:
        module = Parser(make_context(), text, name=filename).parse_module()
    except ParseError as e:
        raise IRError(_describe_parse_error(e, text, filename)) from None
    except (DiagnosticException, ValueError, TypeError) as e:
        raise IRError(f"{filename}: error: {_first_line(e)}") from None
    verify(module, filename, text)
    return module


def _check_string_literals(text: str, filename: str) -> None:
    """Reject an unterminated string literal up front: xDSL's lexer backtracks on one for minutes."""
    for number, line in enumerate(text.splitlines(), start=1):
        code = re.sub(r'\\.', "", line)
        if code.lstrip().startswith("//"):
            continue
        if code.count('"') % 2:
            column = line.index('"') + 1
            raise IRError(f"{filename}:{number}:{column}: error: unterminated string literal")


def _describe_parse_error(e: ParseError, text: str, filename: str) -> str:
    """One line for xDSL's parse error, which points past an unknown op's name (at the next
    token), puts an undefined value at the end of the file, and can have an empty reason."""
    message, position = e.msg.strip(), e.span.start
    # at the end when nothing but blanks follows the error, or follows the token at fault
    at_end = not _UNDEFINED.match(message) and (
        not text[e.span.start :].strip()
        or (not text[e.span.end :].strip() and not _UNREGISTERED.match(message))
    )
    if message == "in block definition":  # xDSL's reason for a block cut short is empty
        message = ""
    if m := _UNREGISTERED.match(message):
        name = m["name"]
        position = max(text.rfind(name, 0, position + 1), 0)
        message = f"unknown operation '{name}'"
    elif m := _UNDEFINED.match(message):
        names = [n.strip() for n in m["names"].split(",")]
        use = re.search(re.escape(names[0]) + r"(?![\w$.-])", text)
        position = use.start() if use else position
        message = f"value{'s' if len(names) > 1 else ''} {', '.join(names)} used but not defined"
    elif message == "Could not parse entire input!":
        message, at_end = "unexpected text after the module", False
    if at_end:
        message = f"unexpected end of input (is the file truncated?){': ' + message if message else ''}"
    elif not message:
        message = "malformed block"
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"{filename}:{line}:{column}: error: {message}"


VERIFY_EACH_ENV = "TILEFUSE_VERIFY_EACH"  # "1": verify the whole module after every pass (debug mode)


def verify_between_passes(module: Operation, filename: str) -> None:
    """`verify`, in debug mode only (`TILEFUSE_VERIFY_EACH=1`; the tests run in it). Outside it, the
    module is verified once, after fusion, before lowering reads it (an invalid module still never
    reaches a kernel; the error then names that stage rather than the pass that broke it). A 32-layer
    Llama's verifies after canonicalize, norm-prologue and split-reduction took 0.4 s on a 2-core CPU."""
    if os.environ.get(VERIFY_EACH_ENV) == "1":
        verify(module, filename)


def verify(module: Operation, filename: str = "<module>", source: str | None = None) -> None:
    """Run every op's verifier, and check that no value is read by an op outside `module`; raises
    IRError naming the failing op (and its line in `source`)."""
    try:
        module.verify()
        _check_readers_inside(module)
    except (VerifyException, DiagnosticException, TypeError) as e:
        op = _failing_op(module)
        where = filename
        if op is not None:
            printed = _first_line_of(op)
            lines = (source or "").splitlines()
            # the reprinted op names its values afresh: compare with SSA names blanked out
            wanted = _SSA_NAME.sub("%", printed.strip())
            matches = (i for i, ln in enumerate(lines, 1) if _SSA_NAME.sub("%", ln.strip()) == wanted)
            number = next(matches, None)
            where = f"{filename}:{number}" if number else filename
            return_text = f"\n  {printed.strip()}"
        else:
            return_text = ""
        raise IRError(f"{where}: error: verification failed: {_first_line(e)}{return_text}") from None


def _check_readers_inside(module: Operation) -> None:
    """Raise VerifyException where a value of `module` is read by an op that is not in it: an op a
    rewrite built and then dropped without erasing keeps a use of its operands, and a later pass
    that walks the uses meets it (the printed IR never shows it)."""
    inside = set(module.walk())
    for op in inside:
        for result in op.results:
            for use in result.uses:
                if use.operation not in inside:
                    raise VerifyException(
                        f"a result of {op.name} is read by {use.operation.name}, which is not in the "
                        "module (an op a rewrite made and dropped without erasing it)"
                    )


def _failing_op(module: Operation) -> Operation | None:
    """The first op, in program order, whose own verifier fails."""
    for op in module.walk():
        try:
            op.verify(verify_nested_ops=False)
        except (VerifyException, DiagnosticException, TypeError):
            return op
    return None


def _first_line_of(op: Operation) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(op)
    return out.getvalue().splitlines()[0]


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def print_module(module: Operation, generic: bool = False) -> str:
    """MLIR text of a module, in tilefuse's custom format or MLIR's generic form."""
    out = io.StringIO()
    Printer(stream=out, print_generic_format=generic).print_op(module)
    out.write("\n")
    return out.getvalue()
