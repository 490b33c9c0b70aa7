"""`vertedge serve`: a DICOM Storage SCP that labels the series it receives and sends the results on.

Three kinds of thread share the queue (`store.NodeStore`):
- pynetdicom's, one per association: each received instance goes to the disk and the queue
  before the C-STORE is acknowledged;
- the labeller (the caller's thread, in `Node.run`): when a study has been quiet for
  `series_quiet_s`, its series are judged by the selector (`select`), the chosen ones labelled
  with `batch.label_one` into STORAGE/outputs/ (the result set of `vertedge run --dicom --png`),
  and a send of the SR and the Secondary Capture queued for each destination;
- the sender: C-STOREs the queued outputs, retrying a destination that is down with growing delays,
  so a down PACS never holds up labelling.

Logs go to the `vertedge.node` logger, as `key=value` fields after an event word; one line per series
when it is finished: how many instances came, what was labelled, where it went, how long it took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from ..batch import Scan, fingerprint, finished_result, label_one, provenance
from ..errors import VertedgeError
from ..outputs import result_paths
from .config import Destination, NodeOptions
from .select import SeriesInfo, choose
from .store import NodeStore, Send, Series

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from ..pipeline import Labeler

log = logging.getLogger("vertedge.node")
INSTALL_HINT = 'vertedge serve needs pynetdicom: pip install "vertedge[dicom]"'
# C-STORE failure statuses (PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def fields(**values: Any) -> str:
    """`key=value` pairs for a log line; values with spaces quoted."""
    def text(v: Any) -> str:
        s = f"{v:.2f}" if isinstance(v, float) else str(v)
        return f'"{s}"' if not s or any(c in s for c in ' ="') else s

    return " ".join(f"{k}={text(v)}" for k, v in values.items())


def _check_pixels(ds: pydicom.Dataset) -> None:
    """Raise ValueError when uncompressed pixel data are shorter than the image's header says (a
    truncated instance: pydicom reads what is there without complaint)."""
    if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        need = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * bits // 8
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"pixel data without a readable image header ({e})") from e
    if len(ds.PixelData) < need:
        raise ValueError(f"pixel data of {len(ds.PixelData)} bytes, the image header asks for {need}")


def _decoded(event: Event) -> tuple[str, str, str, bytes]:
    """(study, series, SOP instance UID, the Part 10 file's bytes) of a received instance.

    Every element is decoded once and the pixel data's length checked, so a data set that
    pydicom cannot read, or one cut short, is refused here, before it is acknowledged, not found
    broken when its series is labelled.
    """
    ds = event.dataset
    for _ in ds.iterall():  # converts each raw element: a malformed one raises here
        pass
    ds.file_meta = event.file_meta
    _check_pixels(ds)
    uids = [str(ds.get(k, "")).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(uids):
        missing = [k for k, u in zip(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"), uids) if not u]
        raise LookupError(f"no {', '.join(missing)}")
    return uids[0], uids[1], uids[2], event.encoded_dataset(include_meta=True)


class Node:
    """A running DICOM node: its storage and queue, its Storage SCP, its labeller and sender."""

    def __init__(self, options: NodeOptions, labeler: Labeler | None = None) -> None:
        """Open the storage and build the labeller (`options.models` on `options.device` unless `labeler` is given)."""
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            raise VertedgeError(INSTALL_HINT) from None
        from ..pipeline import Labeler

        self.options = options
        self.store = NodeStore(options.storage)  # first: a second node on this storage is refused at once
        try:
            self.labeler = labeler if labeler is not None else Labeler(options.models, device=options.device)
        except BaseException:
            self.store.close()
            raise
        self.destinations = {d.label: d for d in options.destinations}
        self.stop = threading.Event()
        self._server: Any = None
        self._poll_s = min(0.5, options.series_quiet_s / 4)

    # --- receiving --------------------------------------------------------------------------------

    def _on_store(self, event: Event) -> int:
        """C-STORE: the instance on the disk and in the queue, then success; a failure status otherwise."""
        calling = event.assoc.requestor.ae_title.strip()
        try:
            study, series, sop, data = _decoded(event)
        except Exception as e:  # whatever the peer sent, the node goes on: the peer hears a failure status
            log.warning("refused_instance %s", fields(calling_ae=calling, reason=f"malformed data set: {e}"))
            return DATA_SET_DOES_NOT_MATCH if isinstance(e, LookupError) else CANNOT_UNDERSTAND
        try:
            self.store.store_instance(study, series, sop, data, calling)
        except (OSError, VertedgeError) as e:
            log.error("cannot_store %s", fields(calling_ae=calling, series_uid=series, reason=str(e)))
            return OUT_OF_RESOURCES
        return 0x0000

    def _on_echo(self, event: Event) -> int:
        """C-ECHO: success (a monitoring probe)."""
        return 0x0000

    def _on_rejected(self, event: Event) -> None:
        """An association refused (an unknown calling or called AE title): one warning line."""
        requestor = event.assoc.requestor
        called = event.assoc.acceptor.ae_title.strip()
        log.warning("association_rejected %s", fields(calling_ae=requestor.ae_title.strip(), called_ae=called, address=requestor.address))

    def _on_aborted(self, event: Event) -> None:
        """An association aborted by the peer or the network: what it delivered before stays; one line."""
        log.warning("association_aborted %s", fields(calling_ae=event.assoc.requestor.ae_title.strip(), address=event.assoc.requestor.address))

    def start_scp(self) -> None:
        """Listen on the configured address and port (in pynetdicom's threads)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.options.ae_title)
        for context in AllStoragePresentationContexts:  # every storage class, stored as it comes (no transcoding)
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.options.calling_ae_titles)
        ae.require_called_aet = True
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.options.retry.timeout_s
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        try:
            self._server = ae.start_server((self.options.host, self.options.port), block=False, evt_handlers=handlers)  # type: ignore[arg-type]
        except OSError as e:
            raise VertedgeError(f"cannot listen on {self.options.host}:{self.options.port} ({e.strerror or e})") from e

    # --- choosing and labelling -------------------------------------------------------------------

    def _info(self, series: Series) -> SeriesInfo:
        """The selector's view of a series: its instance count and one instance's header."""
        n = self.store.n_instances(series.series_uid)
        for path in sorted(self.store.series_folder(series.name).glob("*.dcm")):
            try:
                return SeriesInfo.from_header(pydicom.dcmread(path, stop_before_pixels=True), n)
            except Exception:  # checked on receipt; a file damaged since then: try the next
                continue
        return SeriesInfo(series.series_uid, series.study_uid, 0)

    def decide(self, now: float) -> None:
        """Judge the series of every study that has gone quiet: queue those to label, reject the others."""
        for study in self.store.complete_studies(self.options.series_quiet_s, now):
            rows = self.store.study_series(study)
            waiting = [s for s in rows if s.status == "receiving"]
            earlier = sum(s.status in ("queued", "labelling", "sending", "done") for s in rows)
            for info, reason in choose([self._info(s) for s in waiting], self.options.select, earlier):
                status = "rejected" if reason else "queued"
                self.store.update(info.series_uid, status=status, reason=reason)
                why = {"reason": reason} if reason else {}
                line = fields(series_uid=info.series_uid, study_uid=study, instances=info.n_instances, description=info.description, **why)
                log.info("series_%s %s", status, line)

    def label(self, series: Series) -> None:
        """Label one queued series into STORAGE/outputs/ and queue its sends (once: a result set a killed
        node wrote for the same instances is sent as it is)."""
        self.store.update(series.series_uid, status="labelling")
        out, name = self.store.outputs, series.name
        scan = Scan(self.store.series_folder(name))
        t0 = time.perf_counter()
        try:
            print_ = fingerprint(scan)
            done = finished_result(out, name, print_, self.options.png, dicom=True)
            if done is None:
                result, written = label_one(self.labeler, scan, scan.load(), out, name, provenance(scan, print_), self.options.png, dicom=True)
                n = len(result.vertebrae)
            else:
                written, n = result_paths(out, name, self.options.png, dicom=True), len(done.get("vertebrae", []))
        except Exception as e:  # a series the pipeline cannot read or label fails alone; the node goes on
            if not isinstance(e, VertedgeError):
                log.exception("labelling %s failed unexpectedly", series.series_uid)
            self.store.update(series.series_uid, status="failed", reason=str(e), done_at=time.time())
            log.error("series_failed %s", fields(series_uid=series.series_uid, study_uid=series.study_uid, reason=str(e)))
            return
        seconds = time.perf_counter() - t0
        current = self.store.series(series.series_uid)
        if current is not None and current.last_at > series.last_at:  # more instances came meanwhile: again, with them
            self.store.update(series.series_uid, status="receiving")
            return
        dicom_files = [p for p in written if p.name.endswith(".dcm")]
        self.store.labelled(series.series_uid, dicom_files, list(self.destinations), n_vertebrae=n, label_seconds=seconds)
        if not self.destinations:
            self._finished(series.series_uid)

    # --- sending ----------------------------------------------------------------------------------

    def _send_to(self, destination: Destination, files: list[str]) -> dict[str, str]:
        """C-STORE `files` to `destination` in one association: {file: error, '' when stored}."""
        from pynetdicom import AE

        headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
        ae = AE(ae_title=self.options.ae_title)
        ae.connection_timeout = ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.options.retry.timeout_s
        for h in headers.values():
            ae.add_requested_context(h.SOPClassUID, [h.file_meta.TransferSyntaxUID])
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            why = "association rejected" if assoc.is_rejected else "association aborted" if assoc.is_aborted else "no answer"
            return {f: f"{why} by {destination.ae_title} at {destination.host}:{destination.port}" for f in files}
        errors = {}
        try:
            for f in files:
                status = assoc.send_c_store(Path(f))
                code = getattr(status, "Status", None)
                errors[f] = "" if code in (0x0000, 0xB000, 0xB007, 0xB006) else (
                    "no answer (the association ended)" if code is None else f"C-STORE status 0x{code:04X}"
                )
        finally:
            if assoc.is_established:
                assoc.release()
        return errors

    def send_due(self, now: float) -> None:
        """Try every send whose time has come; failures wait their backoff delay, or are given up."""
        due = self.store.due_sends(now)
        by_destination: dict[str, list[Send]] = {}
        for s in due:
            by_destination.setdefault(s.destination, []).append(s)
        for label, sends in by_destination.items():
            destination = self.destinations.get(label)
            if destination is None:  # removed from the configuration since it was queued
                for s in sends:
                    self.store.send_done(s, "failed", f"destination {label} is no longer configured")
                continue
            try:
                errors = self._send_to(destination, [s.file for s in sends])
            except Exception as e:  # an output file gone, a network error pynetdicom did not catch
                errors = {s.file: f"{type(e).__name__}: {e}" for s in sends}
            for s in sends:
                error = errors.get(s.file, "not sent")
                if not error:
                    self.store.send_done(s, "sent")
                elif time.time() - s.created_at >= self.options.retry.give_up_after_s:
                    self.store.send_done(s, "failed", error)
                    log.error("send_given_up %s", fields(series_uid=s.series_uid, destination=label, attempts=s.attempts + 1, reason=error))
                else:
                    delay = self.options.retry.delay(s.attempts + 1)
                    self.store.send_done(s, "pending", error, time.time() + delay)
                    log.warning("send_failed %s", fields(series_uid=s.series_uid, destination=label, attempt=s.attempts + 1, retry_in_s=delay, reason=error))
        for series_uid in dict.fromkeys(s.series_uid for s in due):
            if all(s.status != "pending" for s in self.store.sends(series_uid)):
                self._finished(series_uid)

    def _finished(self, series_uid: str) -> None:
        """A series whose outputs are all sent (or given up): done or failed, and its one line in the log."""
        series = self.store.series(series_uid)
        if series is None:
            return
        sends = self.store.sends(series_uid)
        failed = sorted({s.destination for s in sends if s.status == "failed"})
        now = time.time()
        status = "failed" if failed else "done"
        reason = f"not sent to {', '.join(failed)}" if failed else ""
        self.store.update(series_uid, status=status, reason=reason, done_at=now)
        sent_to = sorted({s.destination for s in sends if s.status == "sent"})
        line = fields(
            series_uid=series_uid,
            study_uid=series.study_uid,
            instances=self.store.n_instances(series_uid),
            vertebrae=series.n_vertebrae,
            sent_to=",".join(sent_to) or "-",
            **({"not_sent_to": ",".join(failed)} if failed else {}),
            label_s=series.label_seconds or 0.0,
            send_s=now - (series.labelled_at or now),
            total_s=now - series.last_at,  # from the last instance received: the quiet wait included
            outputs=str(self.store.outputs / series.name),
        )
        (log.error if failed else log.info)("series_%s %s", status, line)

    def _sender(self) -> None:
        """The sender thread's loop, until `stop`."""
        while not self.stop.is_set():
            try:
                self.send_due(time.time())
            except Exception:  # a bug must not end the thread silently while the node goes on receiving
                log.exception("sender error")
            self.stop.wait(self._poll_s)

    # --- the node ---------------------------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until `self.stop` is set: listen, label, send; then close the association server and the queue.

        A series being labelled when the stop comes is finished first (seconds); sends still
        waiting stay in the queue for the next start.
        """
        pending = {s: len(self.store.all_series(s)) for s in ("receiving", "queued", "labelling", "sending")}
        for sending in self.store.all_series("sending"):  # every send ended before a crash, the series not yet closed
            if all(s.status != "pending" for s in self.store.sends(sending.series_uid)):
                self._finished(sending.series_uid)
        self.start_scp()
        sender = threading.Thread(target=self._sender, name="vertedge-send", daemon=True)
        sender.start()
        where = fields(ae_title=self.options.ae_title, host=self.options.host, port=self.options.port, storage=str(self.options.storage))
        queued = {f"pending_{k}": v for k, v in pending.items() if v}  # what a restart goes on with
        log.info("listening %s %s", where, fields(destinations=",".join(self.destinations) or "-", device=self.labeler.device, **queued))
        if ready is not None:
            ready()
        try:
            while not self.stop.is_set():
                try:
                    self.decide(time.time())
                    series = self.store.next_to_label()
                except Exception:  # the queue is on the disk: log, wait, try again
                    log.exception("queue error")
                    series = None
                if series is not None:
                    self.label(series)
                else:
                    self.stop.wait(self._poll_s)
        finally:
            self.stop.set()
            if self._server is not None:
                self._server.shutdown()
            sender.join()
            self.store.close()
            log.info("stopped %s", fields(ae_title=self.options.ae_title, port=self.options.port))

