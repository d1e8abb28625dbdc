// Numbers and times as people read them: binary units like the CLI, times in the viewer's
// own zone with how long ago.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit + 1 < UNITS.length) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function rate(byteCount, seconds) {
  return seconds > 0 ? `${bytes(Math.round(byteCount / seconds))}/s` : '—';
}

const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const relativeFormat = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'narrow' });

/** "3 h ago" (or "in 2 min"). */
export function relative(iso) {
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const steps = [[60, 'second'], [3600, 'minute', 60], [86400, 'hour', 3600], [2592000, 'day', 86400], [Infinity, 'month', 2592000]];
  const size = Math.abs(seconds);
  if (size < 60) return relativeFormat.format(Math.round(seconds), 'second');
  for (const [limit, unit, divisor] of steps.slice(1)) {
    if (size < limit) return relativeFormat.format(Math.round(seconds / divisor), unit);
  }
  return absolute.format(new Date(iso));
}

/** A <time> element: the local time, how long ago, and the exact instant on hover. */
export function time(iso) {
  if (!iso) return document.createTextNode('—');
  const element = document.createElement('time');
  element.dateTime = iso;
  element.title = new Date(iso).toString();
  element.textContent = `${absolute.format(new Date(iso))} (${relative(iso)})`;
  return element;
}

export function seconds(start, end) {
  if (!start) return 0;
  return Math.max(0, ((end ? new Date(end) : new Date()).getTime() - new Date(start).getTime()) / 1000);
}

/** "1 h 4 min", "12 s". */
export function duration(totalSeconds) {
  const s = Math.round(totalSeconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
