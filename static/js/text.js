// Text for the pages' HTML: escaping, and a sweep member's field values as "name=value, ...".
export function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function shown(value) {
  if (value === null || value === undefined) return "none";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function fieldsText(values) {
  return Object.entries(values || {}).map(([k, v]) => `${k}=${shown(v)}`).join(", ");
}
