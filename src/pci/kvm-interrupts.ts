// The InterruptSink on top of KVM. MSI goes through irqfds: every distinct message a device
// sends (the address and data the guest programmed into an MSI-X vector) gets a GSI routed to
// it (KVM_SET_GSI_ROUTING) and an eventfd bound to that GSI (KVM_IRQFD). Raising it is then an
// eight-byte write to the eventfd, turned into the interrupt by KVM in the kernel; any thread
// holding the fd can raise it, so later device threads and vhost need no main thread for it.
// Masking and pending bits stay with the MSI-X capability (msix.ts): only messages of
// unmasked vectors reach the sink. A KVM that refuses the routing or the irqfd gets the
// message through KVM_SIGNAL_MSI instead. INTx drives the in-kernel IOAPIC with KVM_IRQ_LINE.
// Structural on purpose (any object with these methods, a VmFd included), so tests and
// other back ends can stand in.
import { KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE } from '../kvm/abi.js';
import { close, EFD_NONBLOCK, eventfd, write } from '../kvm/libc.js';
import type { GsiRoute, MsiMessage } from '../kvm/types.js';
import type { InterruptSink, LogLine } from './interrupt.js';

export interface KvmIrqTarget {
  signalMsi(msi: MsiMessage): number;
  irqLine(irq: number, level: boolean): void;
  setGsiRouting(routes: readonly GsiRoute[]): void;
  registerIrqfd(eventfd: number, gsi: number): void;
  unregisterIrqfd(eventfd: number, gsi: number): void;
}

/** GSIs 0-23 are the PIC and IOAPIC pins; MSI routes take the ones after them. */
const FIRST_MSI_GSI = 24;
/**
 * Distinct messages kept routed at once. A guest uses a few per device; one that keeps
 * reprogramming its vectors makes the oldest routes give way rather than the table grow.
 */
export const MAX_MSI_ROUTES = 256;

/**
 * KVM's own routing for an in-kernel irqchip (what KVM_CREATE_IRQCHIP sets up): GSIs 0-15 to
 * the PIC pin and the IOAPIC pin of the same number, 16-23 to the IOAPIC. KVM_SET_GSI_ROUTING
 * replaces the whole table, so every table set here starts with these, and KVM_IRQ_LINE keeps
 * working as before.
 */
export function irqchipRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < FIRST_MSI_GSI; gsi++) {
    routes.push({ gsi, type: 'irqchip', irqchip: KVM_IRQCHIP_IOAPIC, pin: gsi });
    if (gsi < 16) routes.push({ gsi, type: 'irqchip', irqchip: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: gsi % 8 });
  }
  return routes;
}

interface MsiRoute { gsi: number; fd: number; address: bigint; data: number }

/**
 * TSVIRT_MSI_IRQFD=0 sends every MSI with KVM_SIGNAL_MSI instead: for comparisons, and for a
 * KVM whose irqfds misbehave.
 */
const IRQFD = process.env.TSVIRT_MSI_IRQFD !== '0';

/** An eventfd's increment of one, as irqfd reads it. */
const ONE = new Uint8Array([1, 0, 0, 0, 0, 0, 0, 0]);

export class KvmInterruptSink implements InterruptSink {
  private readonly current: () => KvmIrqTarget;
  /** Routed messages by `address:data`, oldest first. */
  private readonly routes = new Map<string, MsiRoute>();
  /** The VM the routes are set on; a new VM (the machine builds one on reset) starts afresh. */
  private routedVm: KvmIrqTarget | undefined;
  /** The route of the last message sent (see signalMsi). */
  private recent: MsiRoute | undefined;
  /** Set when this VM refused the routing or an irqfd: its MSIs go through KVM_SIGNAL_MSI. */
  private signalOnly = false;

  /** `vm` may be a getter: the machine builds a new VM on reset, and interrupts must go to the current one. */
  constructor(vm: KvmIrqTarget | (() => KvmIrqTarget), private readonly log?: LogLine) {
    this.current = typeof vm === 'function' ? vm : () => vm;
  }

  /** MSI messages with a route and an irqfd on the current VM. */
  get routedCount(): number { return this.routes.size; }

  signalMsi(address: bigint, data: number): void {
    const vm = this.current();
    if (vm !== this.routedVm) {
      this.release();
      this.routedVm = vm;
    }
    if (!this.signalOnly && IRQFD) {
      // The message sent last is looked at first: a queue's completions repeat it, and the
      // map's key costs a BigInt's conversion to text.
      let route = this.recent;
      if (route === undefined || route.data !== data || route.address !== address) {
        route = this.routes.get(`${address}:${data}`) ?? this.route(vm, address, data);
        this.recent = route;
      }
      if (route) {
        write(route.fd, ONE);
        return;
      }
    }
    vm.signalMsi({ addressLo: Number(address & 0xffffffffn), addressHi: Number(address >> 32n), data });
  }

  setIntx(gsi: number, level: boolean): void {
    this.current().irqLine(gsi, level);
  }

  /**
   * Unbinds and closes every irqfd, and forgets the routes. Call on machine reset and
   * teardown, before the VM they were set on closes.
   */
  release(): void {
    const vm = this.routedVm;
    for (const route of this.routes.values()) {
      try {
        vm?.unregisterIrqfd(route.fd, route.gsi);
      } catch {
        // That VM is gone already: its irqfds went with it.
      }
      close(route.fd);
    }
    this.routes.clear();
    this.recent = undefined;
    this.routedVm = undefined;
    this.signalOnly = false;
  }

  /** Routes a new message to a GSI with an irqfd; undefined (and KVM_SIGNAL_MSI from now on) when KVM refuses. */
  private route(vm: KvmIrqTarget, address: bigint, data: number): MsiRoute | undefined {
    let gsi = this.freeGsi();
    if (gsi === undefined) {
      const [oldestKey, oldest] = this.routes.entries().next().value as [string, MsiRoute];
      this.routes.delete(oldestKey);
      if (this.recent === oldest) this.recent = undefined;
      vm.unregisterIrqfd(oldest.fd, oldest.gsi);
      close(oldest.fd);
      gsi = oldest.gsi;
    }
    const route: MsiRoute = { gsi, fd: eventfd(0, EFD_NONBLOCK), address, data };
    try {
      vm.setGsiRouting([...irqchipRoutes(), ...[...this.routes.values(), route].map(msiRoute)]);
      vm.registerIrqfd(route.fd, route.gsi);
    } catch (error) {
      close(route.fd);
      this.signalOnly = true;
      this.log?.(`MSI through irqfd unavailable, using KVM_SIGNAL_MSI: ${(error as Error).message}`);
      return undefined;
    }
    this.routes.set(`${address}:${data}`, route);
    return route;
  }

  private freeGsi(): number | undefined {
    if (this.routes.size >= MAX_MSI_ROUTES) return undefined;
    const used = new Set<number>();
    for (const r of this.routes.values()) used.add(r.gsi);
    let gsi = FIRST_MSI_GSI;
    while (used.has(gsi)) gsi++;
    return gsi;
  }
}

function msiRoute(r: MsiRoute): GsiRoute {
  return { gsi: r.gsi, type: 'msi', addressLo: Number(r.address & 0xffffffffn), addressHi: Number(r.address >> 32n), data: r.data };
}
