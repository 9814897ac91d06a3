// Greedy next token on the GPU (`GpuModel::decode_greedy`): the index of the largest of the
// `P.x` logits of L that is above f32::MIN, the lowest index among equal values, 0 when there
// is none (NaN never wins: its comparisons are false). It becomes the token id T[0] that the
// next pass's embedding look-up reads, and that pass's position I[1] is this one's plus one,
// so the next pass needs nothing from the host. The host's rule is the same
// (`gpu::greedy_token`). One workgroup of WG threads (`Tune::argmax_wg`: 1024, halved
// until the adapter allows it): a strided scan with four independent loads per step
// (indices i, i + WG, i + 2·WG, i + 3·WG, compared in that order, so each thread still sees
// its indices ascending and keeps its lowest index of a tie), then a tree over workgroup
// memory.

@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read_write> T: array<u32>;
@group(0) @binding(2) var<storage, read_write> I: array<u32>;
@group(0) @binding(3) var<uniform> P: vec4<u32>;

const WG: u32 = $WGu;
var<workgroup> sv: array<f32, WG>;
var<workgroup> si: array<u32, WG>;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size($WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let nv = P.x;
    var bv = -3.40282347e38;
    var bi = NONE;
    var i = lid;
    for (; i + 3u * WG < nv; i += 4u * WG) {
        let v0 = L[i];
        let v1 = L[i + WG];
        let v2 = L[i + 2u * WG];
        let v3 = L[i + 3u * WG];
        if (v0 > bv) {
            bv = v0;
            bi = i;
        }
        if (v1 > bv) {
            bv = v1;
            bi = i + WG;
        }
        if (v2 > bv) {
            bv = v2;
            bi = i + 2u * WG;
        }
        if (v3 > bv) {
            bv = v3;
            bi = i + 3u * WG;
        }
    }
    for (; i < nv; i += WG) {
        let v = L[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    sv[lid] = bv;
    si[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let v = sv[lid + s];
            let i = si[lid + s];
            if (v > sv[lid] || (v == sv[lid] && i < si[lid])) {
                sv[lid] = v;
                si[lid] = i;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var id = si[0];
        if (id == NONE) {
            id = 0u;
        }
        T[0] = id;
        I[1] = I[1] + 1u;
    }
}
