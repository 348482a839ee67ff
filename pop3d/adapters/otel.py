"""OpenTelemetry behind the :class:`~pop3d.ports.Tracer` port.

Imported only when ``[tracing] enabled`` is set (by :func:`pop3d.worker.backends.tracer_for`),
so an installation without opentelemetry-api, or with tracing off, imports none of it.  With
opentelemetry-sdk and the OTLP/HTTP exporter installed, each worker sets up its own provider
after ``fork()`` (a batch processor's thread does not survive a fork), exporting where the
standard ``OTEL_EXPORTER_OTLP_*`` variables say; otherwise spans go to whatever provider the
process has (none: they cost almost nothing and go nowhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from pop3d.ports import Span

INSTRUMENTATION = "pop3d"


class OtelSpan:
    """The port's span over an OpenTelemetry span."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_attribute(self, key: str, value: str | int) -> None:
        self._span.set_attribute(key, value)

    def record_exception(self, error: BaseException) -> None:
        self._span.record_exception(error)
        self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class OtelTracer:
    """The Tracer port: each span is the current span while it runs, so spans opened inside
    it (a login's cache, lookup and bcrypt steps) become its children."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._tracer = provider.get_tracer(INSTRUMENTATION)

    def span(self, name: str) -> AbstractContextManager[Span]:
        return self._span(name)

    @contextmanager
    def _span(self, name: str) -> Iterator[Span]:
        with self._tracer.start_as_current_span(
                name, record_exception=False, set_status_on_exception=False) as otel_span:
            span = OtelSpan(otel_span)
            try:
                yield span
            except BaseException as error:
                span.record_exception(error)
                raise


def build_tracer(service_name: str) -> OtelTracer:
    """A tracer for this process; call it after ``fork()``."""
    return OtelTracer(_sdk_provider(service_name) or trace.get_tracer_provider())


def _sdk_provider(service_name: str) -> trace.TracerProvider | None:
    # Optional packages: imported here, so that the API alone is enough to load this module.
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
