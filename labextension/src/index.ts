import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Signal } from '@lumino/signaling';
import { showDiagnostics } from './diagnostics';
import { KernelStatusItem } from './statusitem';
import { IKernelModel, STARTING, StatusStream } from './stream';
import { KernelWarnings } from './warnings';

const PLUGIN = 'elastic-kernels:plugin';

/**
 * The kernel a notebook's session uses. While a start waits (for a GPU, say) the gateway has not
 * answered it, so JupyterLab has no kernel id yet: then the newest of the user's starting
 * kernels of the notebook's kernelspec that no other open notebook uses stands for it.
 */
function kernelOf(
  panel: NotebookPanel,
  stream: StatusStream,
  tracker: INotebookTracker
): IKernelModel | undefined {
  const context = panel.sessionContext;
  const id = context.session?.kernel?.id;
  if (id && stream.kernels.has(id)) {
    return stream.kernels.get(id);
  }
  const spec = context.session?.kernel?.name ?? context.kernelPreference.name;
  const taken = new Set<string>();
  tracker.forEach(other => {
    const otherId = other.sessionContext.session?.kernel?.id;
    if (otherId && other !== panel) {
      taken.add(otherId);
    }
  });
  let found: IKernelModel | undefined;
  for (const model of stream.kernels.values()) {
    if (
      STARTING.has(model.phase) &&
      model.kernelspec === spec &&
      !taken.has(model.id) &&
      (found === undefined || (model.created_at ?? '') > (found.created_at ?? ''))
    ) {
      found = model;
    }
  }
  return found;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN,
  description: 'Kernel resources, queue position and cull warnings for kernels run as pods.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ISettingRegistry],
  activate: async (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null
  ): Promise<void> => {
    const stream = new StatusStream(ServerConnection.makeSettings());
    let available: boolean;
    try {
      available = await stream.start();
    } catch (reason) {
      console.warn('elastic-kernels: no kernel status from this server:', reason);
      available = false;
    }
    if (!available) {
      stream.dispose();
      return; // a plain notebook server: JupyterLab as it is
    }
    const nameOf = (kernelId: string): string => {
      let name = 'a notebook no longer open';
      tracker.forEach(panel => {
        if (panel.sessionContext.session?.kernel?.id === kernelId) {
          name = panel.context.path;
        }
      });
      return name;
    };
    const displayName = (kernelspec: string): string =>
      app.serviceManager.kernelspecs.specs?.kernelspecs[kernelspec]?.display_name ??
      kernelspec;
    const warnings = new KernelWarnings(stream, nameOf, displayName);
    if (settingRegistry) {
      const settings = await settingRegistry.load(PLUGIN);
      const apply = (): void => {
        warnings.leadMinutes = settings.get('cullWarningMinutes').composite as number;
      };
      settings.changed.connect(apply);
      apply();
    }
    if (!statusBar) {
      return;
    }
    const item = new KernelStatusItem(
      model => void showDiagnostics(stream, model.id, `Kernel "${model.display_name}"`)
    );
    const activeChanged = new Signal<unknown, void>(stream);
    const refresh = (): void => {
      const panel = tracker.currentWidget;
      item.setModel(panel ? kernelOf(panel, stream, tracker) : undefined);
      activeChanged.emit();
    };
    stream.changed.connect(refresh);
    tracker.currentChanged.connect(refresh);
    tracker.widgetAdded.connect((_, panel) => {
      panel.sessionContext.kernelChanged.connect(refresh);
      panel.sessionContext.statusChanged.connect(refresh);
    });
    statusBar.registerStatusItem(PLUGIN, {
      item,
      align: 'left',
      rank: 5,
      isActive: () => item.node.textContent !== '',
      activeStateChanged: activeChanged
    });
    refresh();
  }
};

export default plugin;
