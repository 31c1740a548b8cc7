"""Slice sliders for any cover3d plot, with ipywidgets when installed and a static figure otherwise."""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["interactive_slices"]


def _spatial_shape(volume: Any) -> tuple[int, int, int]:
    first = next(iter(volume.values())) if isinstance(volume, Mapping) else volume
    shape = tuple(np.shape(first))
    if len(shape) < 3:
        raise ValueError(f"interactive_slices: the first argument must end with 3 spatial dims (D, H, W), got {shape}")
    return tuple(int(s) for s in shape[-3:])  # type: ignore[return-value]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def interactive_slices(plot: Callable[..., Figure], volume: Any, *args: Any, **kwargs: Any) -> Any:
    """``plot(volume, *args, **kwargs)`` with sliders for its plane when ipywidgets is installed, else the static figure.

    ``plot`` is one of the cover3d plotting functions: single-plane plots (``axis``, ``slice_index``) get an
    axis selector and an index slider, three-plane plots (``slice_indices``) one slider per axis. The slider
    ranges come from the last three dims of ``volume`` (or of the first entry of a mapping). Values of those
    parameters in ``kwargs`` are the initial positions. Returns an ``ipywidgets.VBox`` (each redraw is shown as
    a PNG in an Output widget) or, without ipywidgets, the :class:`~matplotlib.figure.Figure` of ``plot``.
    """
    parameters = inspect.signature(plot).parameters
    if not ("slice_indices" in parameters or {"axis", "slice_index"} <= parameters.keys()):
        raise ValueError(
            f"interactive_slices: {getattr(plot, '__name__', plot)} takes neither slice_indices nor axis/slice_index"
        )
    try:
        import ipywidgets
        from IPython.display import Image, display
    except ImportError:
        return plot(volume, *args, **kwargs)

    shape = _spatial_shape(volume)
    output = ipywidgets.Output()

    def redraw(**plane: Any) -> None:
        fig = plot(volume, *args, **{**kwargs, **plane})
        output.clear_output(wait=True)
        with output:
            display(Image(data=_png(fig)))

    if "slice_indices" in parameters:
        start = kwargs.pop("slice_indices", None) or [s // 2 for s in shape]
        sliders = [
            ipywidgets.IntSlider(value=int(start[a]), min=0, max=shape[a] - 1, description=f"axis {a}")
            for a in range(3)
        ]

        def on_change(_: Any = None) -> None:
            redraw(slice_indices=tuple(s.value for s in sliders))

        controls: list = sliders
    else:
        axis_start = int(kwargs.pop("axis", 0))
        index_start = kwargs.pop("slice_index", None)
        axis_choice = ipywidgets.Dropdown(options=[0, 1, 2], value=axis_start, description="axis")
        index = ipywidgets.IntSlider(
            value=shape[axis_start] // 2 if index_start is None else int(index_start),
            min=0,
            max=shape[axis_start] - 1,
            description="slice_index",
        )

        def on_change(_: Any = None) -> None:
            index.max = shape[axis_choice.value] - 1
            redraw(axis=axis_choice.value, slice_index=min(index.value, index.max))

        controls = [axis_choice, index]
    for control in controls:
        control.observe(on_change, names="value")
    on_change()
    return ipywidgets.VBox([*controls, output])
