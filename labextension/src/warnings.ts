import { Notification } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { IEnded, IKernelModel, STARTING, StatusStream } from './stream';
import { fetchDiagnostics, lastWarning, showDiagnostics } from './diagnostics';

/** setTimeout's longest delay; a later deadline is re-armed by the next model anyway. */
const MAX_DELAY = 2 ** 31 - 1;

interface IPending {
  timer: number;
  notice: string | null;
  deadline: number;
}

interface INextCull {
  at: number;
  what: string;
  /** Whether activity postpones it (not so a maxAge cull). */
  postponable: boolean;
}

/** A duration in seconds as the gateway's messages write it ("8h", "90m", "45s"). */
function duration(seconds: number): string {
  for (const [unit, size] of [
    ['h', 3600],
    ['m', 60]
  ] as const) {
    if (seconds >= size && seconds % size === 0) {
      return `${seconds / size}${unit}`;
    }
  }
  return `${Math.round(seconds)}s`;
}

/** The next cull or reclaim of a kernel: when, and what the notification says of it. */
function nextCull(model: IKernelModel): INextCull | null {
  const cull = model.cull;
  if (model.phase !== 'Running') {
    return null;
  }
  const saved = cull.saved
    ? 'its variables will be saved and restored when you next run a cell'
    : 'its variables will be lost';
  const idle =
    cull.idle_deadline && !cull.protected ? Date.parse(cull.idle_deadline) : Infinity;
  const reclaim =
    cull.reclaimable_at && !cull.protected ? Date.parse(cull.reclaimable_at) : Infinity;
  // maxAge ends a kernel whatever it does (busy and connected included), and unsaved.
  const old = cull.max_age_deadline ? Date.parse(cull.max_age_deadline) : Infinity;
  if (old < Math.min(idle, reclaim)) {
    return {
      at: old,
      what:
        `will be shut down at its maximum age (${duration(cull.max_age)}); ` +
        'its variables will be lost',
      postponable: false
    };
  }
  if (idle === Infinity && reclaim === Infinity) {
    return null;
  }
  if (reclaim < idle) {
    return {
      at: reclaim,
      what: `may be reclaimed for a waiting user; ${saved}`,
      postponable: true
    };
  }
  const action = cull.on_cull === 'Suspend' ? 'suspended' : 'shut down';
  return {
    at: idle,
    what: `will be ${action} for being idle; ${saved}`,
    postponable: true
  };
}

function clock(at: number): string {
  return new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/**
 * Notifications about the user's kernels: before an idle cull or a GPU reclaim (a Keep alive
 * action counts as activity on the kernel) or a maxAge cull (which nothing postpones), after
 * one (with its reason), and when a start
 * fails (with the pod's events and launcher log on demand). Timers are armed from each
 * kernel's deadline as the stream delivers it, so nothing is polled.
 */
export class KernelWarnings {
  constructor(
    private readonly stream: StatusStream,
    private readonly nameOf: (kernelId: string) => string,
    private readonly displayName: (kernelspec: string) => string
  ) {
    stream.changed.connect((_, change) => {
      switch (change.kind) {
        case 'reset':
          for (const id of [...this._pending.keys()]) {
            if (!stream.kernels.has(id)) {
              this.clear(id);
            }
          }
          stream.kernels.forEach(model => this.arm(model));
          break;
        case 'kernel':
          this.arm(change.model);
          break;
        case 'removed':
          this.clear(change.id);
          if (change.lastPhase && STARTING.has(change.lastPhase)) {
            const spec = change.kernelspec ?? '';
            void this.failed(change.id, change.last?.display_name ?? this.displayName(spec));
          }
          break;
        case 'ended':
          this.ended(change.ended);
          break;
      }
    });
  }

  /** Minutes of warning before a cull (the ``cullWarningMinutes`` setting); 0: none. */
  set leadMinutes(value: number) {
    this._lead = value * 60_000;
    for (const id of [...this._pending.keys()]) {
      this.clear(id); // re-armed below with the new lead time
    }
    this.stream.kernels.forEach(model => this.arm(model));
  }

  private arm(model: IKernelModel): void {
    const next = this._lead > 0 ? nextCull(model) : null;
    const pending = this._pending.get(model.id);
    if (next === null) {
      this.clear(model.id);
      return;
    }
    if (pending && pending.deadline === next.at) {
      return;
    }
    const notice = pending?.notice ?? null;
    window.clearTimeout(pending?.timer);
    const entry: IPending = { timer: 0, notice, deadline: next.at };
    this._pending.set(model.id, entry);
    const delay = next.at - this._lead - Date.now();
    if (delay <= 0) {
      this.warn(model, next, entry);
    } else {
      if (notice) {
        // Activity moved the deadline out of the warning window: the warning is over.
        Notification.dismiss(notice);
        entry.notice = null;
      }
      entry.timer = window.setTimeout(
        () => this.warn(model, next, entry),
        Math.min(delay, MAX_DELAY)
      );
    }
  }

  private warn(model: IKernelModel, next: INextCull, entry: IPending): void {
    if (next.at - this._lead > Date.now()) {
      this.arm(model); // a timer capped at MAX_DELAY
      return;
    }
    const message =
      `Kernel "${model.display_name}" of ${this.nameOf(model.id)} ${next.what}` +
      ` (at ${clock(next.at)}).`;
    const keepAlive = {
      label: 'Keep alive',
      caption: 'Count this as activity on the kernel, so its idle time starts again',
      callback: () => void this.keepAlive(model)
    };
    const options = {
      autoClose: false as const,
      actions: next.postponable ? [keepAlive] : []
    };
    if (entry.notice) {
      Notification.update({ id: entry.notice, message, type: 'warning', ...options });
    } else {
      entry.notice = Notification.warning(message, options);
    }
  }

  private async keepAlive(model: IKernelModel): Promise<void> {
    const response = await ServerConnection.makeRequest(
      this.stream.url('kernels', model.id, 'keepalive'),
      { method: 'POST' },
      this.stream.settings
    );
    const data = await response.json();
    if (!response.ok) {
      Notification.error(`Keep alive failed: ${data.message ?? response.status}`);
      return;
    }
    this.clear(model.id);
    if (data.kernel) {
      this.stream.update(data.kernel as IKernelModel);
    }
    Notification.info(`Kernel "${model.display_name}" kept alive.`, { autoClose: 3000 });
  }

  private clear(id: string): void {
    const pending = this._pending.get(id);
    if (pending) {
      window.clearTimeout(pending.timer);
      if (pending.notice) {
        Notification.dismiss(pending.notice);
      }
      this._pending.delete(id);
    }
  }

  private ended(ended: IEnded): void {
    this.clear(ended.kernel_id);
    Notification.info(
      `Kernel "${this.displayName(ended.kernelspec)}" of ${this.nameOf(ended.kernel_id)}: ` +
        `${ended.summary}.`,
      { autoClose: false }
    );
  }

  private async failed(id: string, displayName: string): Promise<void> {
    const title = `Kernel "${displayName}" did not start`;
    // The record is gone with the failure; its events say why (the status said "pulling
    // image" until the pull failed).
    const found = await fetchDiagnostics(this.stream, id).catch(() => null);
    const why =
      (found && typeof found !== 'string' && lastWarning(found)) ||
      'it was removed while starting';
    const short = why.length > 300 ? `${why.slice(0, 300)}…` : why;
    Notification.error(`${title}: ${short}`, {
      autoClose: false,
      actions: [
        {
          label: 'Show details',
          caption: "The kernel pod's events and launcher log",
          callback: () => void showDiagnostics(this.stream, id, title)
        }
      ]
    });
  }

  private _lead = 5 * 60_000;
  private _pending = new Map<string, IPending>();
}
