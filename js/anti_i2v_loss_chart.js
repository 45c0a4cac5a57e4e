/**
 * Anti-I2V frontend extension: a live chart of the protect-loop objective on the AntiI2V_ProtectLoop node.
 *
 * The node sends one websocket event per iteration (see nodes/ and the node contract):
 *   "anti_i2v.progress" {node: <unique id>, step: i, total: n, loss: float, terms: {name: float}}
 * This extension keeps those points on the node (node.antiI2VChart) and draws them on a <canvas> inside a
 * DOM widget: the total loss (thick white line) and each loss term (IRA, IRC, AdvDM, PhotoGuard ...), every
 * series scaled to its own range so terms of very different magnitude stay readable; the legend gives the
 * latest unscaled values. All text goes through canvas fillText or textContent: nothing from the server is
 * ever parsed as HTML.
 *
 * The chart widget is not serialised (widget.serialize = false, options.serialize = false): saved workflows
 * and API prompts are the same with or without this extension.
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXTENSION_NAME = "AntiI2V.LossChart";
const NODE_TYPE = "AntiI2V_ProtectLoop";
const EVENT = "anti_i2v.progress";
const WIDGET_NAME = "loss_chart";
const CHART_HEIGHT = 150;
/** Points kept per series; older points are thinned (every other one dropped) beyond this. */
const MAX_POINTS = 1024;
const TOTAL_COLOR = "#f2f2f2";
const TERM_COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae"];

/** Format a loss value compactly for the legend. */
function fmt(v) {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
  return v.toPrecision(4);
}

/** The loss history of one ProtectLoop node and its drawing. */
export class LossChart {
  constructor() {
    this.canvas = null;
    this.reset(0);
    this._frame = 0;
  }

  /** Forget the history (a new run started). */
  reset(total) {
    this.total = total;
    this.step = 0;
    this.events = 0;
    this.steps = [];
    this.loss = [];
    /** @type {Record<string, number[]>} term name -> values, aligned with this.steps (NaN where missing) */
    this.terms = {};
  }

  /**
   * Add one progress event. A step that does not follow the last one (step 1 again, or a smaller step)
   * starts a new run.
   */
  push(detail) {
    const step = Number(detail?.step);
    const total = Number(detail?.total);
    if (!Number.isFinite(step)) return false;
    if (this.events === 0 || step <= this.step) this.reset(Number.isFinite(total) ? total : 0);
    if (Number.isFinite(total)) this.total = total;
    this.step = step;
    this.events += 1;
    const n = this.steps.length;
    this.steps.push(step);
    this.loss.push(Number(detail?.loss));
    const terms = detail?.terms && typeof detail.terms === "object" ? detail.terms : {};
    for (const name of Object.keys(terms)) {
      if (!(name in this.terms)) this.terms[name] = new Array(n).fill(NaN);
    }
    for (const name of Object.keys(this.terms)) {
      this.terms[name].push(name in terms ? Number(terms[name]) : NaN);
    }
    if (this.steps.length > MAX_POINTS) this._thin();
    this.requestDraw();
    return true;
  }

  /** Drop every other stored point except the newest (keeps memory bounded on long runs). */
  _thin() {
    const keep = (_, i, arr) => i % 2 === 0 || i === arr.length - 1;
    this.steps = this.steps.filter(keep);
    this.loss = this.loss.filter(keep);
    for (const name of Object.keys(this.terms)) this.terms[name] = this.terms[name].filter(keep);
  }

  /** A plain-data snapshot (read by tests from the page and handy in the browser console). */
  state() {
    return {
      events: this.events,
      step: this.step,
      total: this.total,
      points: this.steps.length,
      lastLoss: this.loss.length ? this.loss[this.loss.length - 1] : null,
      terms: Object.keys(this.terms),
      drawn: this.drawn ?? 0,
    };
  }

  requestDraw() {
    if (this._frame || !this.canvas) return;
    const raf = window.requestAnimationFrame ?? ((f) => setTimeout(f, 16));
    this._frame = raf(() => {
      this._frame = 0;
      this.draw();
    });
  }

  /** Draw the history on this.canvas (sized to its CSS box times devicePixelRatio). */
  draw() {
    const canvas = this.canvas;
    if (!canvas) return;
    const dpr = window.devicePixelRatio || 1;
    const cssW = Math.max(1, canvas.clientWidth || 300);
    const cssH = Math.max(1, canvas.clientHeight || CHART_HEIGHT);
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    ctx.fillStyle = "#1b1b1b";
    ctx.fillRect(0, 0, cssW, cssH);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "top";

    const names = Object.keys(this.terms);
    const header =
      this.events === 0
        ? "loss chart: waiting for a run"
        : `step ${this.step}/${this.total || "?"}   loss ${fmt(this.loss[this.loss.length - 1])}`;
    ctx.fillStyle = TOTAL_COLOR;
    ctx.fillText(header, 6, 4);
    // legend: one line of "name value" entries under the header
    let x = 6;
    names.forEach((name, k) => {
      const vals = this.terms[name];
      const label = `${name} ${fmt(vals[vals.length - 1])}`;
      ctx.fillStyle = TERM_COLORS[k % TERM_COLORS.length];
      ctx.fillText(label, x, 18);
      x += ctx.measureText(label).width + 10;
    });

    const top = 34;
    const left = 6;
    const w = cssW - 12;
    const h = cssH - top - 6;
    ctx.strokeStyle = "#333";
    ctx.lineWidth = 1;
    ctx.strokeRect(left + 0.5, top + 0.5, w - 1, h - 1);
    if (this.steps.length === 0 || w <= 2 || h <= 2) {
      this.drawn = (this.drawn ?? 0) + 1;
      return;
    }
    const first = this.steps[0];
    const last = Math.max(this.steps[this.steps.length - 1], this.total || 0, first + 1);
    const sx = (s) => left + ((s - first) / (last - first)) * (w - 2) + 1;
    const series = [[this.loss, TOTAL_COLOR, 2]];
    names.forEach((name, k) => series.push([this.terms[name], TERM_COLORS[k % TERM_COLORS.length], 1]));
    // draw terms first, total on top
    for (const [vals, color, width] of series.slice(1).concat(series.slice(0, 1))) {
      const finite = vals.filter(Number.isFinite);
      if (!finite.length) continue;
      const lo = Math.min(...finite);
      const hi = Math.max(...finite);
      const span = hi - lo || 1;
      const sy = (v) => top + 2 + (1 - (v - lo) / span) * (h - 4);
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.beginPath();
      let pen = false;
      vals.forEach((v, i) => {
        if (!Number.isFinite(v)) {
          pen = false;
          return;
        }
        if (pen) ctx.lineTo(sx(this.steps[i]), sy(v));
        else ctx.moveTo(sx(this.steps[i]), sy(v));
        pen = true;
      });
      if (finite.length === 1) {
        const i = vals.findIndex(Number.isFinite);
        ctx.arc(sx(this.steps[i]), sy(vals[i]), 2, 0, 2 * Math.PI);
      }
      ctx.stroke();
    }
    this.drawn = (this.drawn ?? 0) + 1;
  }
}

/** Attach the chart widget to a ProtectLoop node (once). */
function attachChart(node) {
  if (node.antiI2VChart) return node.antiI2VChart;
  const chart = new LossChart();
  const box = document.createElement("div");
  box.className = "anti-i2v-loss-chart";
  box.style.cssText = `width:100%;height:${CHART_HEIGHT}px;box-sizing:border-box;`;
  const canvas = document.createElement("canvas");
  canvas.style.cssText = "width:100%;height:100%;display:block;border-radius:4px;";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "Anti-I2V loss chart");
  box.title = "Anti-I2V protect loop: total loss and loss terms per step";
  box.appendChild(canvas);
  chart.canvas = canvas;
  const widget = node.addDOMWidget(WIDGET_NAME, "anti_i2v_loss_chart", box, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => CHART_HEIGHT,
    getMaxHeight: () => CHART_HEIGHT * 2,
  });
  widget.serialize = false; // keep widgets_values of saved workflows free of the chart
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(() => chart.requestDraw()).observe(canvas);
  }
  node.antiI2VChart = chart;
  chart.requestDraw();
  return chart;
}

/** Every (sub)graph of the app, to find the node an event names. */
function graphs() {
  const out = [app.graph];
  const subs = app.graph?.subgraphs;
  if (subs && typeof subs.values === "function") out.push(...subs.values());
  return out.filter(Boolean);
}

/** The ProtectLoop node an event's unique id names ("12", or "5:12" inside a subgraph). */
export function findNode(uniqueId) {
  const id = String(uniqueId ?? "");
  const last = id.split(":").pop();
  for (const g of graphs()) {
    for (const key of [id, last]) {
      const node = g.getNodeById?.(key) ?? g.getNodeById?.(Number(key));
      if (node && node.type === NODE_TYPE) return node;
    }
  }
  return null;
}

app.registerExtension({
  name: EXTENSION_NAME,

  async setup() {
    api.addEventListener(EVENT, (event) => {
      const detail = event?.detail;
      const node = findNode(detail?.node);
      if (!node) return;
      const chart = attachChart(node);
      chart.push(detail);
      node.setDirtyCanvas?.(true, false);
    });
  },

  async nodeCreated(node) {
    if (node?.comfyClass === NODE_TYPE || node?.type === NODE_TYPE) attachChart(node);
  },
});
