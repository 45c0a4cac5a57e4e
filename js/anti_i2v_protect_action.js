/**
 * Anti-I2V frontend action: "Anti-I2V: protect this image" in the context menu of any node with an IMAGE output.
 *
 * One rewire for an existing I2V graph: it inserts an AntiI2V_ProtectImage node, connects the IMAGE output to
 * its `image` input and moves EVERY other link of that output to the node's `protected` output, so all
 * consumers get the protected photo (in ComfyUI's Wan 2.1 I2V template: WanImageToVideo.start_image AND
 * CLIPVisionEncode.image; rewiring only the first would leave the CLIP image tokens unprotected).
 * It then connects the models the graph already uses (MODEL of the sampler, VAE, CLIP_VISION, positive
 * CONDITIONING of the video node) and copies CLIPVisionEncode's crop and WanImageToVideo's length (SVD:
 * video_frames) into the node's clip_vision_crop and frames widgets.
 *
 * Only graph objects are touched: no HTML is built from graph or server text.
 */
import { app } from "../../scripts/app.js";

const EXTENSION_NAME = "AntiI2V.ProtectAction";
const PROTECT_NODE = "AntiI2V_ProtectImage";
export const MENU_LABEL = "Anti-I2V: protect this image";
/** Widgets of video nodes whose value is the length of the generated video. */
const LENGTH_WIDGETS = ["length", "video_frames"];

/** The LLink with this id, whatever the graph's link container is (Map or object). */
function getLink(graph, id) {
  if (id == null) return null;
  if (typeof graph.getLink === "function") {
    const l = graph.getLink(id);
    if (l) return l;
  }
  const links = graph.links;
  if (!links) return null;
  return (links instanceof Map ? links.get(id) : links[id]) ?? null;
}

/** {node, slot} feeding the input called `name` of `node`, or null. */
function upstream(graph, node, name) {
  const input = (node.inputs ?? []).find((i) => i.name === name);
  const link = input ? getLink(graph, input.link) : null;
  if (!link) return null;
  const src = graph.getNodeById(link.origin_id);
  return src ? { node: src, slot: link.origin_slot } : null;
}

/** Every node reading any output of `node`. */
function consumers(graph, node) {
  const out = [];
  for (const o of node.outputs ?? []) {
    for (const id of o.links ?? []) {
      const link = getLink(graph, id);
      const dst = link && graph.getNodeById(link.target_id);
      if (dst) out.push(dst);
    }
  }
  return out;
}

function widget(node, name) {
  return (node.widgets ?? []).find((w) => w.name === name);
}

/** The first IMAGE output slot of a node, or -1. */
export function imageOutput(node) {
  return (node.outputs ?? []).findIndex((o) => o.type === "IMAGE");
}

/**
 * Insert AntiI2V_ProtectImage after output `slot` of `node` and move every link of that output to it.
 * Returns the new node.
 */
export function protectImage(node, slot = imageOutput(node)) {
  const graph = node.graph ?? app.graph;
  const output = node.outputs?.[slot];
  if (!output || output.type !== "IMAGE") throw new Error("Anti-I2V: the node has no IMAGE output here");
  const targets = (output.links ?? []).map((id) => getLink(graph, id)).filter(Boolean)
    .map((l) => ({ node: graph.getNodeById(l.target_id), slot: l.target_slot })).filter((t) => t.node);

  graph.beforeChange?.();
  const p = LiteGraph.createNode(PROTECT_NODE);
  if (!p) throw new Error(`Anti-I2V: node type ${PROTECT_NODE} is not registered`);
  p.pos = [node.pos[0], node.pos[1] + (node.size?.[1] ?? 300) + 50]; // below the photo: its consumers are to the right
  graph.add(p);
  node.connect(slot, p, p.findInputSlot("image"));
  const protectedSlot = p.findOutputSlot("protected");
  for (const t of targets) p.connect(protectedSlot, t.node, t.slot); // replaces the link to the clean photo

  // the models of the graph: from the consumers of the photo and the nodes after them
  const wire = (name, src) => {
    const idx = p.findInputSlot(name);
    const input = p.inputs?.[idx];
    if (src && idx >= 0 && input && input.link == null) src.node.connect(src.slot, p, idx);
  };
  for (const { node: t } of targets) {
    wire("vae", upstream(graph, t, "vae"));
    wire("positive", upstream(graph, t, "positive"));
    const cvEncoder = t.type === "CLIPVisionEncode" ? t : upstream(graph, t, "clip_vision_output")?.node;
    if (cvEncoder) {
      wire("clip_vision", upstream(graph, cvEncoder, "clip_vision"));
      const crop = widget(cvEncoder, "crop");
      const mine = widget(p, "clip_vision_crop");
      if (crop && mine && (crop.value === "none" || crop.value === "center")) mine.value = crop.value;
    }
    wire("clip_vision", upstream(graph, t, "clip_vision"));
    for (const name of LENGTH_WIDGETS) {
      const w = widget(t, name);
      const frames = widget(p, "frames");
      if (w && frames && Number.isInteger(w.value) && w.value >= 1) frames.value = w.value;
    }
    for (const after of consumers(graph, t)) wire("model", upstream(graph, after, "model"));
  }
  const models = graph.nodes.filter((n) => (n.outputs ?? []).some((o) => o.type === "MODEL"));
  if (models.length === 1) wire("model", { node: models[0], slot: models[0].outputs.findIndex((o) => o.type === "MODEL") });
  graph.afterChange?.();
  graph.setDirtyCanvas?.(true, true);
  return p;
}

app.registerExtension({
  name: EXTENSION_NAME,
  protectImage,
  getNodeMenuItems(node) {
    if (!node || node.type === PROTECT_NODE || imageOutput(node) < 0) return [];
    return [{ content: MENU_LABEL, callback: () => protectImage(node) }];
  },
});
