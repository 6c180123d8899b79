"""``torch.export`` of a (pruned) model: an ExportedProgram whose module is checked against eager PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ExportError
from ._outputs import FlatOutputs, positional, quiet_exporters, relative_error


def export_program(model: nn.Module, inputs: Any, path: Optional[str | Path] = None, check_inputs: Any = None,
                   tolerance: float = 1e-4):
    """``torch.export.export`` the model on `inputs`, check it on `check_inputs` (same shapes), optionally save it.

    Args:
        model: put in eval mode.
        inputs: a tensor, a tuple of tensors, or a dict passed by name.
        path: where to write the program (``torch.export.save``, a ``.pt2`` archive), if given.

    Returns:
        The ``torch.export.ExportedProgram`` (its ``.module()`` returns the flat tuple of output tensors).

    Raises:
        ExportError: torch.export refused (the message carries its first line: usually the operation), or the
            exported program's outputs differ from eager by more than `tolerance` (relative).
    """
    args, names = positional(inputs)
    wrapped = FlatOutputs(model.eval(), names).eval()
    try:
        with quiet_exporters(), torch.no_grad():
            program = torch.export.export(wrapped, tuple(a.detach() for a in args), strict=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all mean "refused"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch.export of {type(model).__name__} failed: {type(exc).__name__}: {first[:300]}") \
            from None
    check, _ = positional(inputs if check_inputs is None else check_inputs)
    with torch.no_grad():
        expected, got = wrapped(*check), program.module()(*check)
    error = relative_error(list(expected), list(got))
    if error > tolerance:
        raise ExportError(f"the torch.export program of {type(model).__name__} differs from eager by {error:.3g} "
                          f"relative (> {tolerance})")
    if path is not None:
        torch.export.save(program, str(path))
    return program
