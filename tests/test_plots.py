"""curves.png and compare's overlay: whole-number epoch ticks, legends and titles inside the figure."""

from __future__ import annotations

import pytest

from cnnlab.runs.write import curves_figure


def rows(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": 1 - 0.5 / e, "val_acc": 1 - 0.6 / e}
            for e in range(1, epochs + 1)]


def inside(fig, box) -> bool:
    width, height = fig.canvas.get_width_height()
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_epoch_ticks_are_whole_numbers(epochs: int):
    import matplotlib.pyplot as plt

    fig = curves_figure(rows(epochs))
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown and all(float(t).is_integer() for t in shown), shown
    plt.close(fig)


def test_legend_and_a_long_title_stay_inside_the_figure():
    import matplotlib.pyplot as plt

    title = " ".join(f"model=resnet18 loss=focal optimizer=adamw scheduler=onecycle run={i}" for i in range(3))
    fig = curves_figure(rows(5), title)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert fig._suptitle is not None and inside(fig, fig._suptitle.get_window_extent(renderer))
    for ax in fig.axes:
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["train", "validation"]
        assert inside(fig, legend.get_window_extent(renderer))
    plt.close(fig)


def test_class_names_a_font_lacks_draw_without_a_warning_per_glyph():
    import io
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np

    from cnnlab.runs.write import confusion_figure
    from cnnlab.train.environment import quiet_libraries

    def glyph_warnings() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            if not quiet:
                warnings.simplefilter("always")
            fig = confusion_figure(np.eye(3, dtype=int), ["お", "き", "す"])
            fig.savefig(io.BytesIO(), format="png")
            plt.close(fig)
        return [str(w.message) for w in caught if "Glyph" in str(w.message)]

    quiet = False
    assert glyph_warnings()  # the premise: matplotlib's default font has no hiragana
    quiet = True
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # no once-per-place registry hiding them: only quiet_libraries' filter
        quiet_libraries()
        assert glyph_warnings() == []
