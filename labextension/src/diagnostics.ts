import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';
import { StatusStream } from './stream';

interface IEvent {
  time: string | null;
  type: string;
  reason: string;
  message: string;
  object: string;
  count: number;
}

export interface IDiagnostics {
  kernel_id: string;
  events: IEvent[];
  logs: { pod: string; lines: string[]; error: string | null }[];
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text = '',
  className = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.textContent = text;
  if (className) {
    node.className = className;
  }
  return node;
}

function render(found: IDiagnostics): Widget {
  const body = new Widget();
  body.addClass('ek-Diagnostics');
  const table = element('table');
  table.appendChild(element('caption', `Events (${found.events.length})`));
  const head = table.createTHead().insertRow();
  for (const title of ['Time', 'Type', 'Reason', 'Object', 'Message']) {
    head.appendChild(element('th', title));
  }
  const rows = table.createTBody();
  for (const event of found.events) {
    const row = rows.insertRow();
    const when = event.time ? new Date(event.time).toLocaleTimeString() : '';
    for (const text of [when, event.type, event.reason, event.object, event.message]) {
      row.appendChild(element('td', text));
    }
  }
  body.node.appendChild(table);
  for (const log of found.logs) {
    body.node.appendChild(element('h3', `Launcher log of ${log.pod}`));
    const text = log.error ?? (log.lines.join('\n') || '(no lines)');
    body.node.appendChild(element('pre', text, 'ek-Diagnostics-log'));
  }
  if (found.logs.length === 0) {
    body.node.appendChild(element('p', 'No pod log: the kernel has no pod any more.'));
  }
  return body;
}

/** The kernel's pod events and launcher log from the gateway, or why there are none. */
export async function fetchDiagnostics(
  stream: StatusStream,
  kernelId: string
): Promise<IDiagnostics | string> {
  const response = await ServerConnection.makeRequest(
    stream.url('kernels', kernelId, 'diagnostics'),
    {},
    stream.settings
  );
  const data = await response.json();
  return response.ok
    ? (data as IDiagnostics)
    : String(data.message ?? `Error ${response.status}`);
}

/** The newest warning among a kernel's events: the likeliest reason its start failed. */
export function lastWarning(found: IDiagnostics): string | null {
  const warning = [...found.events].reverse().find(e => e.type === 'Warning');
  return warning ? `${warning.reason}: ${warning.message}` : null;
}

/** The kernel's pod events and launcher log, fetched now, in a dialog. */
export async function showDiagnostics(
  stream: StatusStream,
  kernelId: string,
  title: string
): Promise<void> {
  const found = await fetchDiagnostics(stream, kernelId);
  const body =
    typeof found === 'string'
      ? new Widget({ node: element('p', found) })
      : render(found);
  await showDialog({ title, body, buttons: [Dialog.okButton({ label: 'Close' })] });
}
