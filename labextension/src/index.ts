// notebookos inside JupyterLab: the GPU pool dashboard (served by the server extension at {base_url}notebookos/)
// from a launcher card, the Kernel menu and the command palette; and a status-bar item with the GPU state of the
// current notebook's or console's kernel when it is a notebookos kernel.

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, ISessionContext } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { KernelFollower } from './follower';

const OPEN_DASHBOARD = 'notebookos:open-dashboard';
const PROVISIONER = 'notebookos-provisioner'; // what every notebookos kernelspec names in its metadata

const gpuIcon = new LabIcon({
  name: 'notebookos:gpu',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
  <g class="jp-icon3" fill="#616161">
    <path d="M6 6h12v12H6zm2 2v8h8V8z"/>
    <path d="M8 2h2v3H8zm6 0h2v3h-2zM8 19h2v3H8zm6 0h2v3h-2zM2 8h3v2H2zm0 6h3v2H2zm17-6h3v2h-3zm0 6h3v2h-3z"/>
    <rect x="10" y="10" width="4" height="4"/>
  </g>
</svg>`
});

/** The dashboard's address; with a kernel id, its page about that kernel. */
function dashboardUrl(kernelId?: string): string {
  const url = URLExt.join(PageConfig.getBaseUrl(), 'notebookos/');
  return kernelId ? `${url}#kernels/${encodeURIComponent(kernelId)}` : url;
}

/** The session of a main-area widget that has one (notebooks and consoles do). */
function sessionOf(widget: Widget | null): ISessionContext | null {
  const context = (widget as { sessionContext?: ISessionContext } | null)?.sessionContext;
  return context && typeof context === 'object' && 'kernelChanged' in context ? context : null;
}

/** The status-bar item: the follower's state as text, its reasons in the tooltip; a click opens the dashboard. */
class GpuStatusItem extends Widget {
  constructor(private follower: KernelFollower, open: (kernelId: string) => void) {
    super();
    this.addClass('jp-StatusBar-TextItem');
    this.addClass('notebookos-GpuStatus');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._label.className = 'notebookos-GpuStatus-label';
    this._detail.className = 'notebookos-GpuStatus-detail';
    this.node.append(this._label, this._detail);
    const activate = () => follower.kernelId && open(follower.kernelId);
    this.node.addEventListener('click', activate);
    this.node.addEventListener('keydown', event => event.key === 'Enter' && activate());
    follower.changed.connect(this.render, this);
  }

  render(): void {
    const state = this.follower.state;
    this._label.textContent = state?.text ?? '';
    this._detail.textContent = state?.detail ?? '';
    this.node.title = state?.title ?? '';
    this.node.dataset.state = state?.state ?? 'none';
  }

  private _label = document.createElement('span');
  private _detail = document.createElement('span');
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'notebookos:plugin',
  description: 'The notebookos GPU pool dashboard in the launcher and menus; the kernel GPU state in the status bar.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null
  ) => {
    app.commands.addCommand(OPEN_DASHBOARD, {
      label: args => (args.isLauncher ? 'GPU Pool Dashboard' : 'Open GPU Pool Dashboard'),
      caption: 'The notebookos dashboard: hosts, GPUs, kernels and events of the shared GPU pool (in a new tab)',
      icon: args => (args.isPalette ? undefined : gpuIcon),
      execute: args => {
        window.open(dashboardUrl(args.kernel as string | undefined), '_blank', 'noopener');
      }
    });
    launcher?.add({ command: OPEN_DASHBOARD, args: { isLauncher: true }, category: 'Other', rank: 50 });
    palette?.addItem({ command: OPEN_DASHBOARD, args: { isPalette: true }, category: 'notebookos' });
    // The Kernel menu's entry is declared in schema/plugin.json ("jupyter.lab.menus").

    if (!statusBar) {
      return;
    }
    const follower = new KernelFollower();
    const item = new GpuStatusItem(follower, kernel => app.commands.execute(OPEN_DASHBOARD, { kernel }));
    statusBar.registerStatusItem('notebookos:gpu-status', {
      item,
      align: 'left',
      rank: 4,
      isActive: () => follower.state !== null,
      activeStateChanged: follower.changed
    });

    // Follow the kernel of the current notebook or console, when its kernelspec is a notebookos one.
    const specs = app.serviceManager.kernelspecs;
    let current: ISessionContext | null = null;
    const update = () => {
      const kernel = current?.session?.kernel ?? null;
      const spec = kernel ? specs.specs?.kernelspecs[kernel.name] : undefined;
      const provisioner = (spec?.metadata?.kernel_provisioner as { provisioner_name?: string } | undefined)
        ?.provisioner_name;
      follower.follow(kernel && provisioner === PROVISIONER ? kernel.id : null);
    };
    // A cell starting or ending: read the model at once rather than wait for the stream's next event.
    const onStatus = () => {
      update();
      const status = current?.session?.kernel?.status;
      if (status === 'busy' || status === 'idle') {
        follower.refresh();
      }
    };
    const track = () => {
      current?.kernelChanged.disconnect(update);
      current?.statusChanged.disconnect(onStatus);
      current = sessionOf(app.shell.currentWidget);
      current?.kernelChanged.connect(update);
      current?.statusChanged.connect(onStatus);
      update();
    };
    app.shell.currentChanged?.connect(track);
    specs.specsChanged.connect(update);
    void app.restored.then(track);
  }
};

export default plugin;
