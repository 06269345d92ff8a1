// The workerd processes this process started (Miniflare's, or wrangler dev's below it), and
// what they used, read from /proc: `make bench`'s CPU time per request and the upload cost
// test's figures.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/** The workerd processes below this one (children, or theirs), by pid. */
export function workerdPids() {
  const parents = new Map();
  const names = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      names.set(entry, stat.slice(stat.indexOf('(') + 1, close));
      parents.set(entry, stat.slice(close + 2).split(' ')[1]);
    } catch { /* gone */ }
  }
  const mine = (pid) => {
    for (let at = pid, hops = 0; at && hops < 8; at = parents.get(at), hops += 1) {
      if (at === String(process.pid)) return true;
    }
    return false;
  };
  return [...names].filter(([pid, name]) => name.startsWith('workerd') && mine(pid)).map(([pid]) => pid);
}

/** CPU milliseconds (user + system) the processes have used so far. */
export function cpuMs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch { /* gone */ }
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/** A process's peak resident memory (VmHWM), in bytes. */
export function peakBytes(pid) {
  return Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/)[1]) * 1024;
}
