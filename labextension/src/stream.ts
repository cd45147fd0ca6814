import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

/** A kernel as the gateway's status stream describes it (statusstream.py, ``kernel_status``). */
export interface IKernelModel {
  id: string;
  user: string;
  kernelspec: string;
  display_name: string;
  phase: string;
  state: string;
  reason: string;
  message: string;
  gpus: number;
  node: string | null;
  queue_position: number | null;
  created_at: string | null;
  resources: { summary: string };
  cull: {
    idle_timeout: number;
    idle_since: string | null;
    idle_deadline: string | null;
    protected: string | null;
    max_age: number;
    max_age_deadline: string | null;
    reclaim_after: number;
    reclaimable_at: string | null;
    on_cull: string;
    saved: boolean;
  };
}

/** Why a kernel went away or was suspended (the overview's ``culls``). */
export interface IEnded {
  kernel_id: string;
  kernelspec: string;
  reason: string;
  summary: string;
  message: string;
  at: string;
}

export type Change =
  | { kind: 'kernel'; model: IKernelModel }
  | {
      kind: 'removed';
      id: string;
      last: IKernelModel | undefined;
      lastPhase: string | null;
      kernelspec: string | null;
    }
  | { kind: 'ended'; ended: IEnded }
  | { kind: 'reset' };

/** Phases in which a kernel is still on its way to running. */
export const STARTING = new Set(['Pending', 'Starting']);

/**
 * The notebook server's relay of the gateway's per-user status stream, as server-sent events:
 * the browser's EventSource reconnects by itself, and a refused or lost stream is reopened with
 * a growing delay. Nothing here polls; every change arrives as an event.
 */
export class StatusStream implements IDisposable {
  readonly kernels = new Map<string, IKernelModel>();

  constructor(readonly settings: ServerConnection.ISettings) {}

  get changed(): ISignal<this, Change> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /**
   * Start listening; false when this notebook server has no status relay (a plain server, or
   * no gateway), in which case the extension stays out of the way.
   */
  async start(): Promise<boolean> {
    const response = await ServerConnection.makeRequest(
      this.url('status'),
      {},
      this.settings
    );
    if (response.status === 404) {
      return false;
    }
    this.open();
    return true;
  }

  url(...parts: string[]): string {
    return URLExt.join(this.settings.baseUrl, 'elastic-kernels/api', ...parts);
  }

  /** Apply a model that came another way (a keepalive's answer) as if streamed. */
  update(model: IKernelModel): void {
    this.kernels.set(model.id, model);
    this._changed.emit({ kind: 'kernel', model });
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._source?.close();
    window.clearTimeout(this._retry);
    Signal.clearData(this);
  }

  private open(): void {
    if (this._disposed) {
      return;
    }
    const source = (this._source = new EventSource(this.url('stream'), {
      withCredentials: true
    }));
    source.addEventListener('snapshot', event => {
      this._delay = 1000;
      const view = JSON.parse((event as MessageEvent).data);
      this.kernels.clear();
      for (const model of view.kernels as IKernelModel[]) {
        this.kernels.set(model.id, model);
      }
      // Culls from before this page was open are history, not news.
      for (const ended of (view.overview?.culls ?? []) as IEnded[]) {
        this._seen.add(`${ended.kernel_id}@${ended.at}`);
      }
      this._changed.emit({ kind: 'reset' });
    });
    source.addEventListener('kernel', event => {
      const model = JSON.parse((event as MessageEvent).data) as IKernelModel;
      this.kernels.set(model.id, model);
      this._changed.emit({ kind: 'kernel', model });
    });
    source.addEventListener('removed', event => {
      const data = JSON.parse((event as MessageEvent).data);
      const id = data.id as string;
      const last = this.kernels.get(id);
      this.kernels.delete(id);
      this._changed.emit({
        kind: 'removed',
        id,
        last,
        lastPhase: data.last_phase ?? last?.phase ?? null,
        kernelspec: data.kernelspec ?? last?.kernelspec ?? null
      });
    });
    source.addEventListener('overview', event => {
      const overview = JSON.parse((event as MessageEvent).data);
      for (const ended of ((overview.culls ?? []) as IEnded[]).slice().reverse()) {
        const key = `${ended.kernel_id}@${ended.at}`;
        if (!this._seen.has(key)) {
          this._seen.add(key);
          this._changed.emit({ kind: 'ended', ended });
        }
      }
    });
    source.onerror = () => {
      // CONNECTING: the browser retries by itself. CLOSED: it gave up (an error status).
      if (source.readyState === EventSource.CLOSED && !this._disposed) {
        this._retry = window.setTimeout(() => this.open(), this._delay);
        this._delay = Math.min(this._delay * 2, 60_000);
      }
    };
  }

  private _changed = new Signal<this, Change>(this);
  private _source: EventSource | null = null;
  private _seen = new Set<string>();
  private _delay = 1000;
  private _retry = 0;
  private _disposed = false;
}
