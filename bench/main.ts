// `npm run bench`: runs every benchmark group and prints one table per group, with ratios
// against the reference implementation (QEMU, qemu-img) measured in the same run.
export interface BenchRow { name: string; ours: number; reference: number | null; unit: string; higherIsBetter: boolean }
export type BenchGroup = { title: string; run: () => Promise<BenchRow[]> };

// Each module in ./groups exports `group: BenchGroup`; they are found at run time so that
// adding a benchmark touches no shared file.
async function loadGroups(): Promise<BenchGroup[]> {
  const { readdirSync } = await import('node:fs');
  const dir = new URL('./groups/', import.meta.url);
  const names = readdirSync(dir).filter((n) => n.endsWith('.js')).sort();
  const groups: BenchGroup[] = [];
  for (const n of names) groups.push(((await import(new URL(n, dir).href)) as { group: BenchGroup }).group);
  return groups;
}

export function printTable(title: string, rows: BenchRow[]): void {
  process.stdout.write(`\n${title}\n`);
  const header = ['benchmark', 'tsvirt', 'reference', 'unit', 'ratio'];
  const lines = rows.map((r) => {
    const ratio = r.reference === null || r.reference === 0 || r.ours === 0
      ? '-'
      : (r.higherIsBetter ? r.ours / r.reference : r.reference / r.ours).toFixed(2);
    return [r.name, r.ours.toFixed(2), r.reference === null ? '-' : r.reference.toFixed(2), r.unit, ratio];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  process.stdout.write(fmt(header) + '\n' + fmt(widths.map((w) => '-'.repeat(w))) + '\n');
  for (const l of lines) process.stdout.write(fmt(l) + '\n');
  process.stdout.write('(ratio > 1 means tsvirt is better)\n');
}

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  for (const g of await loadGroups()) {
    if (only.length && !only.some((o) => g.title.toLowerCase().includes(o.toLowerCase()))) continue;
    printTable(g.title, await g.run());
  }
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
