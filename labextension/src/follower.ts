// Follows one notebookos kernel: its model from the REST API, refreshed whenever the API's event stream
// (GET api/notebookos/events/stream?kernel=ID, server-sent events) tells of something that happened to it.
//
// The stream answers 200 even without a cluster (it then sends a `cluster_unavailable` event), and it sends events of
// a kernel only once the cluster knows the kernel; so the kernel model is asked for only after the stream named the
// kernel, and a kernel the cluster does not know never causes a failed request. While a state moves on without an
// event saying so (a replica catching up, a cell running) the model is also read again every second.

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { IGpuState, IKernelModel, describe, isReplicaCause } from './state';

const API = 'api/notebookos/';
const POLL_MS = 1000;

export class KernelFollower {
  /** Emitted whenever what the item should show may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The kernel followed, or null. */
  get kernelId(): string | null {
    return this._kernelId;
  }

  /** What to show; null while there is nothing to show (not a notebookos kernel, or not known to the cluster yet). */
  get state(): IGpuState | null {
    if (this._kernelId === null) {
      return null;
    }
    if (this._unavailable !== null) {
      return {
        state: 'unknown',
        text: 'GPU: —',
        detail: '',
        title: `The notebookos GPU pool does not answer: ${this._unavailable}`,
        transient: false
      };
    }
    return this._model ? describe(this._model, this._causes) : null;
  }

  /** Follow this kernel (null: none). */
  follow(kernelId: string | null): void {
    if (kernelId === this._kernelId) {
      return;
    }
    this._stop();
    this._kernelId = kernelId;
    if (kernelId !== null) {
      this._open(kernelId);
    }
    this._changed.emit();
  }

  /** Read the kernel's model again (the kernel went busy or idle), once the stream has shown the cluster knows it. */
  refresh(): void {
    if (!this._known) {
      return;
    }
    if (this._inFlight) {
      this._again = true;
      return;
    }
    void this._read();
  }

  dispose(): void {
    this.follow(null);
    Signal.clearData(this);
  }

  private _open(kernelId: string): void {
    const url =
      URLExt.join(this._settings.baseUrl, API, 'events/stream') + URLExt.objectToQueryString({ kernel: kernelId });
    const source = new EventSource(url, { withCredentials: true });
    source.onmessage = message => {
      let event: { kind?: string; replica?: number | null };
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (event.kind === 'kernel_placed') {
        this._causes.clear(); // started (again): its replicas start afresh
      } else if (typeof event.kind === 'string' && typeof event.replica === 'number' && isReplicaCause(event.kind)) {
        this._causes.set(event.replica, event.kind);
      }
      if (event.kind === 'kernel_closed') {
        this._known = false;
        this._model = null;
        this._changed.emit();
        return;
      }
      this._known = true;
      this._unavailable = null; // the stream heard from the cluster
      this.refresh();
    };
    source.addEventListener('cluster_unavailable', message => {
      let said = 'the cluster is not running';
      try {
        said = JSON.parse((message as MessageEvent).data).message ?? said;
      } catch {
        // keep the default words
      }
      this._unavailable = said;
      this._changed.emit();
    });
    this._source = source;
  }

  private async _read(): Promise<void> {
    const kernelId = this._kernelId;
    if (kernelId === null) {
      return;
    }
    this._inFlight = true;
    window.clearTimeout(this._timer);
    try {
      const url = URLExt.join(this._settings.baseUrl, API, 'kernels', encodeURIComponent(kernelId));
      // Not JupyterLab's default `no-store`, which appends a cache-busting `?<time>` that the API refuses (400: it
      // takes no unknown query parameters). `no-cache` has the browser revalidate every read (tornado's ETag).
      const response = await ServerConnection.makeRequest(url, { cache: 'no-cache' }, this._settings);
      if (kernelId === this._kernelId) {
        if (response.ok) {
          this._model = (await response.json()) as IKernelModel;
          this._unavailable = null;
        } else if (response.status === 404) {
          this._model = null; // shut down meanwhile
        } else {
          const body = await response.json().catch(() => ({}));
          this._unavailable = body.message ?? `${response.status} ${response.statusText}`;
        }
      }
    } catch (err) {
      if (kernelId === this._kernelId) {
        this._unavailable = String(err);
      }
    } finally {
      this._inFlight = false;
    }
    if (kernelId !== this._kernelId) {
      if (this._again) {
        this._again = false;
        this.refresh();
      }
      return;
    }
    this._changed.emit();
    if (this._again) {
      this._again = false;
      this.refresh();
    } else if (this.state?.transient) {
      this._timer = window.setTimeout(() => this.refresh(), POLL_MS);
    }
  }

  private _stop(): void {
    this._source?.close();
    this._source = null;
    window.clearTimeout(this._timer);
    this._model = null;
    this._unavailable = null;
    this._known = false;
    this._again = false;
    this._causes.clear();
  }

  private _settings = ServerConnection.makeSettings();
  private _kernelId: string | null = null;
  private _source: EventSource | null = null;
  private _model: IKernelModel | null = null;
  private _unavailable: string | null = null;
  private _known = false;
  private _inFlight = false;
  private _again = false;
  private _timer = 0;
  private _causes = new Map<number, string>();
  private _changed = new Signal<this, void>(this);
}
