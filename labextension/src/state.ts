// What the status-bar item says about a kernel, from the REST API's kernel model (GET api/notebookos/kernels/{id})
// and the replica events of the event stream. Pure functions: no DOM, no requests.

/** The fields of the API's kernel model that the item reads. */
export interface IKernelModel {
  id: string;
  gpus: number;
  replicas: { index: number; host: string; alive: boolean; state: string }[];
  /** The current or last cell that asked for GPUs: queued, running or done; null before the first. */
  cell: null | {
    state: string;
    gpus: number | null;
    decision: string | null;
    reason: string | null;
    host: string | null;
    devices: number[] | null;
  };
}

export interface IGpuState {
  /** idle, binding, held, waiting, migrating or unknown: the item's data-state, for styling. */
  state: string;
  /** The short text in the status bar, e.g. "GPU: 1 held" or "GPU: idle · replica 2 being replaced". */
  text: string;
  /** A longer text shown beside it, cut to the room there is (the reason a cell waits). */
  detail: string;
  /** The tooltip: everything, in sentences. */
  title: string;
  /** Whether this state may move on without an event saying so (a replica catching up, a replica moving for a
   * cell): the model is read again every second until it settles. */
  transient: boolean;
}

/** Replica event kinds that say why a replica is not ready: moved (migrating) or lost (being replaced). */
const MOVED = new Set(['replica_moved']);
const LOST = new Set(['replica_killed', 'replica_exited', 'replica_lost', 'replica_replaced']);

export function isReplicaCause(kind: string): boolean {
  return MOVED.has(kind) || LOST.has(kind);
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** The GPU part: what the kernel's current cell holds or waits for. */
function gpuState(kernel: IKernelModel): IGpuState {
  const cell = kernel.cell;
  const click = ' Click to open the kernel in the GPU pool dashboard.';
  if (!cell || cell.state === 'done') {
    const asked = cell ? ` Its last GPU cell asked for ${plural(cell.gpus ?? 0, 'GPU')}.` : '';
    return {
      state: 'idle',
      text: 'GPU: idle',
      detail: '',
      title: `No cell of this kernel holds a GPU.${asked} GPUs are bound only while a cell runs (%gpus N sets how many).${click}`,
      transient: false
    };
  }
  const gpus = cell.gpus ?? 0;
  const where = cell.host ? ` on ${cell.host}` : '';
  const devices = cell.devices?.length ? ` (device ${cell.devices.join(', ')})` : '';
  if (cell.state === 'running') {
    const held = cell.devices?.length ?? gpus;
    return {
      state: 'held',
      text: `GPU: ${held} held`,
      detail: '',
      title: `The running cell holds ${plural(held, 'GPU')}${where}${devices}; they go back when it ends.${click}`,
      transient: false // its end is an event (and the kernel going idle)
    };
  }
  const reason = (cell.reason ?? '').replace(/^queued:\s*/, '');
  if (cell.decision === 'queued') {
    return {
      state: 'waiting',
      text: 'GPU: waiting',
      detail: reason,
      title: `The cell waits for ${plural(gpus, 'GPU')}: ${reason || 'no reason given'}.${click}`,
      transient: false
    };
  }
  if (cell.decision === 'migrate') {
    return {
      state: 'migrating',
      text: 'GPU: migrating',
      detail: `to ${cell.host ?? '?'}`,
      title: `A replica moves to ${cell.host ?? 'another host'} for the cell's ${plural(gpus, 'GPU')}: ${reason}.${click}`,
      transient: true
    };
  }
  return {
    state: 'binding',
    text: 'GPU: binding',
    detail: '',
    title: `The cell was granted ${plural(gpus, 'GPU')}${where}${devices}; its executor is starting it.${click}`,
    transient: true
  };
}

/**
 * The item's state for a kernel. ``causes`` maps a replica index to the kind of the latest replica event the stream
 * told of it (since the kernel was placed), which says whether a replica that is not ready is migrating or being
 * replaced.
 */
export function describe(kernel: IKernelModel, causes: Map<number, string>): IGpuState {
  const gpu = gpuState(kernel);
  const notes: string[] = [];
  const sentences: string[] = [];
  for (const r of kernel.replicas) {
    if (r.state === 'ready') {
      continue;
    }
    // A replica catching up after the kernel started is part of starting it: only one the stream saw moved or
    // lost is worth a note.
    const cause = causes.get(r.index) ?? '';
    const where = `${r.state.replace('_', ' ')}, on ${r.host}`;
    if (r.state === 'migrating' || (r.state === 'catching_up' && MOVED.has(cause))) {
      notes.push(`replica ${r.index} migrating`);
      sentences.push(`Replica ${r.index} is moving to another host (${where}).`);
    } else if (r.state === 'lost' || (r.state === 'catching_up' && LOST.has(cause))) {
      notes.push(`replica ${r.index} being replaced`);
      sentences.push(`Replica ${r.index} was lost; a replacement is starting (${where}).`);
    }
  }
  if (!notes.length) {
    return gpu;
  }
  return {
    ...gpu,
    text: `${gpu.text} · ${notes.join(', ')}`,
    title: `${sentences.join(' ')} ${gpu.title}`,
    transient: true
  };
}
