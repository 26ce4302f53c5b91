// Chooses where the guest suite runs. Until the lab exists, it runs directly.
export async function guestTestRunner(_root: string): Promise<(args: string[]) => Promise<number>> {
  const { spawn } = await import('node:child_process');
  return (args) => new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    child.on('exit', (code) => resolve(code ?? 1));
  });
}
