"""ChatPanel: a message box, the answer streaming in, the reply's audio, the turn's timings and its trace."""

from __future__ import annotations

import html
import threading
from typing import Any

from ._common import format_ms, import_plotly, import_widgets
from ._live import DEFAULT_INTERVAL, Throttle
from ._widgets import error_html, replace_figure, serialized, subscribe
from .figures.waterfall import waterfall

widgets = import_widgets()


class ChatPanel(widgets.VBox):
    """Chat with the agent through `client` (a `homunculy_nb.chat.ChatClient`) from a widget.

    The turn runs on a worker thread, so the cell returns at once; text chunks appear at most twice a
    second. When the turn ends, the panel shows its audio (MP3), its timings and its trace id. With a
    `source` (the stack's collector), the panel also draws the turn's trace and redraws it as the
    agent's spans arrive.
    """

    def __init__(self, client: Any, source: Any = None, *, stream_audio: bool = True,
                 interval: float = DEFAULT_INTERVAL) -> None:
        if not callable(getattr(client, "send", None)):
            raise TypeError(f"Expected a ChatClient, but {type(client).__name__} has no `send()`.")

        self._view_lock = threading.RLock()
        self._client = client
        self._source = source
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._text: list[str] = []
        self._audio_chunks = 0
        self.turn: Any = None

        self.message = widgets.Textarea(placeholder="Message to the agent", rows=2,
                                        layout=widgets.Layout(width="100%"))
        self.send_button = widgets.Button(description="Send", icon="paper-plane", button_style="primary")
        self.stream_audio = widgets.Checkbox(value=stream_audio, description="audio", indent=False)
        self.answer = widgets.HTML(layout=widgets.Layout(min_height="3em"))
        self.audio = widgets.Audio(format="mpeg", autoplay=False, loop=False,
                                   layout=widgets.Layout(display="none"))
        self.timings = widgets.HTML()
        self.trace = widgets.HTML()
        self.figure = None
        if source is not None:
            go = import_plotly()
            self.figure = go.FigureWidget()
            self.figure.layout.height = 40

        self.send_button.on_click(lambda _: self.send(self.message.value))
        children = [widgets.HBox([self.message, widgets.VBox([self.send_button, self.stream_audio])]),
                    self.answer, self.audio, self.timings, self.trace]
        super().__init__(children + ([self.figure] if self.figure is not None else []))

        self._throttle = Throttle(self._apply, interval, on_error=self._show_error)
        self._unsubscribe = subscribe(source, self._throttle, ("spans",)) if source is not None else None

    def send(self, message: str, wait: bool = False) -> Any:
        """Send `message` on a worker thread; with `wait`, block until the turn ends and return it."""
        message = message.strip()
        if not message:
            self.answer.value = error_html("Type a message first.")
            return None
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                self.answer.value += error_html(" (wait for the current turn to end)")
                return None
            self._text = []
            self._audio_chunks = 0
            self.turn = None
            self._worker = threading.Thread(target=self._run_turn, args=(message, self.stream_audio.value),
                                            name="homunculy-nb-chat-panel", daemon=True)
            self.send_button.disabled = True
            self.answer.value = "<i>…</i>"
            self.timings.value = ""
            self.trace.value = ""
            self.audio.layout.display = "none"
            self._worker.start()
        if wait:
            self._worker.join()
            self._throttle.flush()
            return self.turn
        return None

    def _run_turn(self, message: str, stream_audio: bool) -> None:
        try:
            turn = self._client.send(message, stream_audio=stream_audio,
                                     on_event=lambda event: self._throttle.push(("event", event)))
        except Exception as exc:  # noqa: BLE001 - any failure ends up in the panel, not in a thread trace
            self._throttle.push(("failed", exc))
        else:
            self._throttle.push(("turn", turn))

    @serialized
    def _apply(self, items: list[Any]) -> None:
        text_changed = False
        for item in items:
            kind, payload = item
            if kind == "event":
                text_changed |= self._take_event(payload)
            elif kind == "turn":
                self._finish(payload)
            elif kind == "failed":
                self.send_button.disabled = False
                self.answer.value = self._answer_html() + "<br>" + error_html(
                    f"{type(payload).__name__}: {payload}")
            elif kind in ("spans",) and self.turn is not None and self.turn.trace_id:
                if (payload["trace_id"] == self.turn.trace_id).any():
                    self.draw_trace()
        if text_changed and self.turn is None:
            self.answer.value = self._answer_html() + " <i>…</i>"

    def _take_event(self, event: Any) -> bool:
        data = getattr(event, "data", None) or {}
        if getattr(event, "type", None) == "text_chunk" and isinstance(data.get("chunk"), str):
            self._text.append(data["chunk"])
            return True
        if getattr(event, "type", None) == "audio_chunk":
            self._audio_chunks += 1
        return False

    def _finish(self, turn: Any) -> None:
        self.turn = turn
        self.send_button.disabled = False
        self._text = [turn.text]
        self.answer.value = self._answer_html()
        if turn.error is not None:
            self.answer.value += "<br>" + error_html(f"{turn.error.code}: {turn.error.message}")
        elif turn.interrupted:
            self.answer.value += " <i>(interrupted)</i>"

        audio = turn.audio
        if audio:
            self.audio.value = audio
            self.audio.layout.display = None
        self.timings.value = html.escape(
            f"first chunk {format_ms(turn.time_to_first_chunk_ms)} · first audio "
            f"{format_ms(turn.time_to_first_audio_ms)} · duration {format_ms(turn.duration_ms)} · "
            f"{len(turn.chunks)} text chunks, {len(turn.audio_chunks)} audio chunks ({len(audio)} bytes)")
        if turn.trace_id:
            self.trace.value = f"trace <code>{html.escape(turn.trace_id)}</code>"
            if self._source is not None:
                self.draw_trace()

    @serialized
    def draw_trace(self) -> None:
        """Draw the last turn's trace from `source` (the spans received so far)."""
        if self.figure is None or self.turn is None or not self.turn.trace_id:
            return
        replace_figure(self.figure, waterfall(self._source, self.turn.trace_id))

    def _answer_html(self) -> str:
        return f"<div style='white-space:pre-wrap'>{html.escape(''.join(self._text))}</div>"

    def _show_error(self, error: BaseException) -> None:
        self.trace.value = error_html(f"Update failed: {error}")

    def close(self) -> None:
        """Stop following the collector and close the widgets; the client stays open."""
        # Also runs from __del__ of a widget whose __init__ raised, so attributes may be missing.
        if getattr(self, "_throttle", None) is not None:
            self._throttle.close()
        if getattr(self, "_unsubscribe", None) is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    def __repr__(self) -> str:
        worker = getattr(self, "_worker", None)
        state = "streaming" if worker is not None and worker.is_alive() else "idle"
        return f"<ChatPanel {state}, last trace {getattr(getattr(self, 'turn', None), 'trace_id', None)!r}>"
