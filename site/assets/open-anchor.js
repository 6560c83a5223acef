// A link to a claim's card (#claim-...) lands inside a folded block: open every <details> around
// the target, then scroll to it (Chromium does this by itself; other browsers do not).
function openAnchorTarget() {
  const id = decodeURIComponent(window.location.hash.slice(1));
  const target = id && document.getElementById(id);
  if (!target) return;
  for (let d = target.closest("details"); d; d = d.parentElement.closest("details")) d.open = true;
  target.scrollIntoView();
}
window.addEventListener("hashchange", openAnchorTarget);
window.addEventListener("DOMContentLoaded", openAnchorTarget);
