import { Widget } from '@lumino/widgets';
import { IKernelModel, STARTING } from './stream';

/** What the status bar says of a kernel: where it runs, or what its start waits for. */
export function describe(model: IKernelModel): string {
  const resources = model.resources.summary;
  if (STARTING.has(model.phase)) {
    return `${model.display_name}: ${model.state}`;
  }
  if (model.phase === 'Suspended') {
    return `${resources} · ${model.state}`;
  }
  if (model.phase === 'Running') {
    return resources;
  }
  return `${model.display_name}: ${model.state}`;
}

function tooltip(model: IKernelModel): string {
  const lines = [`${model.display_name} (${model.phase}): ${model.state}`];
  if (model.phase === 'Suspended' && model.message) {
    lines.push(model.message); // why it was suspended, or why its last resume failed
  }
  const cull = model.cull;
  if (cull.protected) {
    lines.push(`Not culled while ${cull.protected}.`);
  } else if (cull.idle_deadline) {
    const action = cull.on_cull === 'Suspend' ? 'suspended' : 'shut down';
    lines.push(`Idle: ${action} at ${new Date(cull.idle_deadline).toLocaleTimeString()}.`);
  }
  if (cull.reclaimable_at) {
    const at = new Date(cull.reclaimable_at).toLocaleTimeString();
    lines.push(`Its GPU may go to a waiting user from ${at}.`);
  }
  return lines.join('\n');
}

/** The status-bar item for the active notebook's kernel; a click shows its events and log. */
export class KernelStatusItem extends Widget {
  constructor(private readonly details: (model: IKernelModel) => void) {
    super({ node: document.createElement('span') });
    this.addClass('ek-KernelStatus');
    this.addClass('jp-StatusBar-TextItem');
    this.node.addEventListener('click', () => {
      if (this._model) {
        this.details(this._model);
      }
    });
  }

  setModel(model: IKernelModel | undefined): void {
    this._model = model;
    if (model === undefined) {
      this.node.textContent = '';
      this.node.title = '';
      delete this.node.dataset.phase;
      return;
    }
    this.node.textContent = describe(model);
    this.node.title = `${tooltip(model)}\nClick for its events and launcher log.`;
    this.node.dataset.phase = model.phase;
  }

  private _model: IKernelModel | undefined;
}
