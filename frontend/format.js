// How values read on the page. Every formatter takes what the API may send, including null or a missing field,
// and answers DASH for what is unknown: a field the server does not report yet must never break a view.

export const DASH = "—";

/** @param {unknown} value */
export function isNum(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** A count, or DASH. */
export function num(value) {
  return isNum(value) ? String(value) : DASH;
}

/** Text as given, or DASH for null, undefined and the empty string. */
export function text(value) {
  return value === null || value === undefined || value === "" ? DASH : String(value);
}

/** A subscription ratio, e.g. "1.50×". */
export function ratio(value) {
  return isNum(value) ? `${value.toFixed(2)}×` : DASH;
}

/** Epoch seconds as local wall-clock time with seconds, e.g. "14:03:27". */
export function clock(epochSeconds) {
  if (!isNum(epochSeconds)) return DASH;
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

/** A duration in seconds, at a precision that suits its size: "850 ms", "12.3 s", "4 min 10 s", "2 h 3 min". */
export function duration(seconds) {
  if (!isNum(seconds) || seconds < 0) return DASH;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const s = Math.floor(seconds);
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Seconds between two epoch times, or null when either is unknown. */
export function between(start, end) {
  return isNum(start) && isNum(end) ? end - start : null;
}

/** The first characters of a kernel id: enough to tell kernels apart on a card; the full id is in the title. */
export function shortId(id) {
  return typeof id === "string" && id.length > 8 ? id.slice(0, 8) : text(id);
}

/** Now, in epoch seconds (the API's unit). */
export function nowSeconds() {
  return Date.now() / 1000;
}
