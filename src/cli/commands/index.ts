// The list of subcommands. A command module exports `register(program)`.
import type { Command } from 'commander';
import { register as registerRun } from './run.js';
import { register as registerImg } from './img.js';
import { register as registerQmp } from './qmp.js';
import { register as registerLab } from './lab.js';

export type RegisterCommand = (program: Command) => void;

export const commands: RegisterCommand[] = [];
commands.push(registerImg);
commands.push(registerQmp);
commands.push(registerLab);
commands.push(registerRun);
