"""Short, collapsible explanations for students: the texts the pages declare, and how they are shown."""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import dcc

_TOKENS = """
**CLS token.** DINOv2 cuts the image into 14 x 14-pixel patches and adds one extra token, CLS, that attends to all
of them. Its final value is the image's **embedding**: one vector per image, the one dinoscope compares images by.

**Patch tokens.** Every patch also leaves the network as a vector that describes that patch *in the context of the
whole image*. The stored **patch grid** holds them in their places, so regions of one image can be compared.

**Registers.** The model has 4 more tokens, registers, that belong to no patch. Without them, large ViTs turn a few
background patches into scratch space with very high norms (artifacts); registers take that job, so the patch
tokens stay clean. The patch-norm map shows it: there should be no isolated bright patches.
"""

CLUSTERING = """
**PCA** projects onto the directions of largest variance: linear, fast, and distances between far-apart groups
keep their meaning. **t-SNE** keeps each image's nearest neighbours close; it exaggerates gaps, and neither the
distances between clusters nor their sizes mean much. **UMAP** also keeps neighbourhoods, and more of the global
layout than t-SNE, but it is still not a faithful map of distances.

**K-Means** assumes k round clusters of similar size and puts every image in one. **DBSCAN** finds dense regions
of any shape and calls what lies between them noise; eps is how close neighbours must be (here a chord distance,
sqrt(2 - 2 cos), between normalised embeddings: eps 0.5 means cosine similarity 0.875 or more). **Hierarchical
(Ward)** merges the closest groups step by step, keeping clusters compact, and cuts the tree at k clusters.
Clustering works on the embeddings, not on the 2-D picture, unless the switch says otherwise: K-Means and Ward on
their first 50 principal components (which keep the clusters' shape and are fast), DBSCAN on the normalised
embeddings themselves (so that eps means the cosine shown beside it). In a large dataset DBSCAN and Ward cluster
a sample of 5,000 images and every other image joins the cluster of its nearest sampled image.

**Can I trust the picture?** Colour the points by **neighbourhood preservation**: for each image, the share of its
k nearest neighbours in the embedding (by cosine similarity) that are also among its k nearest on the plot. Blue
points sit among their true neighbours; red ones were placed among strangers, so what surrounds them on the plot
says little about them. t-SNE and UMAP keep small neighbourhoods well and distort large distances; PCA keeps large
distances and squashes neighbourhoods together. **Trustworthiness** (0 to 1) sums it up for the whole plot: it
penalises every image that appears among a point's k nearest on the plot although it is far from it in the
embedding (1: no such intruders). Both are measured on a seeded sample of 5,000 images (trustworthiness on 2,000 of
them) in a larger dataset, with neighbours looked up within the sample.

**Selections.** Use Lasso select or Box select in the plot's toolbar to pick images; the selection shows as
thumbnails below the plot, the other points greyed. A new pick replaces the selection, adds to it or removes from
it; Invert selects every other image. The address bar keeps the selection's id (`selection=`): a link opens the
same images for anyone, on this page and on the similarity page. Download it as CSV, JSON or `.npz` (with the
embeddings), or copy the Python that reads it from the database.
"""

REGION_QUERY = """
**Where else does this appear?** Draw a box on the picture (drag with the mouse): the patch tokens under the box
are the **region**. The dataset is first cut down to a **shortlist**, the images whose embeddings are nearest the
image's own (a region of an image usually recurs in images of similar content, and ranking by embedding is one
matrix product). Then the region's block of tokens is slid over each shortlisted image's patch grid, and each
image is scored by its best place: the mean cosine between the region's tokens and the tokens under them. A longer
shortlist finds the region in images that look different overall, at the cost of reading more grids.
"""

SIMILARITY = """
**Cosine similarity** is the cosine of the angle between two embeddings: 1 for the same direction, 0 for
unrelated, negative for opposite. It ignores the vectors' lengths, which is why DINOv2's embeddings are usually
compared this way. Similar images have similar CLS embeddings; what "similar" means is what the model learnt
without labels: objects, parts, textures and layout.

Besides the embedding, every 14 x 14-pixel patch of an indexed image leaves the network as a **patch token**; the
stored **patch grid** holds them in their places, so a part of the reference can be looked for in other images. An
uploaded picture is not indexed: it has no patch grid.
""" + REGION_QUERY

PATCHES = _TOKENS + """
**Clusters** group patches whose tokens point the same way (K-Means on normalised tokens): parts of objects,
background, texture. **Pooling** averages tokens over a window of patches every few patches, for coarser regions
without running the model again. **PCA colours** show the three main directions of the tokens as red, green and
blue. **Foreground** is the first principal component, turned so that the image's border counts as background.
""" + REGION_QUERY

WHY = _TOKENS + """
**Why similar.** Two images are similar when their CLS embeddings point the same way; the patch tokens show where
that comes from. For every patch of one image dinoscope finds its most cosine-similar patch in the other; when the
two patches choose each other (**mutual nearest neighbours**) they are a **correspondence**, drawn as a line. Mutual
choice leaves out patches that are only the least bad match of many (plain sky or background). The **patch match**
is the mean cosine of the correspondences, and each matched patch's colour is its share of it: where the two
images agree most. With random weights the lines join noise.
"""

EMBEDDINGS = _TOKENS + """
Single features of an embedding rarely mean something a person would name; what matters is how whole vectors
compare (cosine similarity).

**PCA** finds the directions along which the (normalised, centred) embeddings vary most, orthogonal to each
other, largest variance first. Projecting onto the first few keeps as much of the variance as any linear
projection to that many dimensions can; the explained variance ratio is each direction's share. PCA is linear:
curved or clustered structure can overlap in it.
"""

DUPLICATES = """
**Exact copies** hold the same bytes: the indexer keeps a hash of every file's content (SHA-256), and two files with
the same hash are the same file, whatever their names. They are looked for in this dataset and in the other
datasets embedded by the same model with the same weights.

**Near-duplicates** are different files of (almost) the same picture: resized, recompressed, slightly cropped or
edited. Their embeddings point almost the same way, so their **cosine similarity** is close to 1. The histogram
shows, for every image, the similarity to its most similar other image: duplicates make a bump near 1, apart from
the bulk of ordinary neighbours. Put the **threshold** in the gap between them. Images are grouped when a chain
of pairs at the threshold or above joins them (connected components), so in a large group two images may be less
similar than the threshold, each close to a third. Where a near-duplicate ends and a merely similar picture begins
is a choice: look at the groups as you move the threshold.

Every pair of images is compared, so no pair at the threshold or above is missed; in a large dataset a fast,
rougher first pass picks the pairs to compare exactly. Below 0.85 (where the threshold cannot go) the histogram
may be off by about 0.01.
"""

COMPARE = _TOKENS + """
**CLS or mean of patches?** The CLS token is trained to summarise the whole image: it tends to say *what* the
picture is about (the main object, the scene). The mean of the patch tokens averages what every patch says,
background included, so it weighs large regions, textures and colours more, and a small object less. Where the
two rankings agree, the images are alike both as a whole and region by region; where they differ, look at what
the mean-patch neighbours share (often the background). The **concatenation** puts both side by side, each
normalised, so the cosine is the average of the two: a compromise.

**Overlap@K** is how many of the K nearest images two rankings have in common, divided by K; **Jaccard** divides
by the number of distinct images in both lists. **Precision@K** is the share of the K nearest images in the
reference's own folder: with folders as labels, a number you can compare between representations.

**Two models.** Two datasets indexed from the same folder with different models, input sizes or weights hold the
same files, matched by their content (a hash of the bytes). The **adjusted Rand index** compares the clusters
K-Means finds in each: 1 when both group the images identically, about 0 when they agree no more than chance.
"""

IMAGE_SETS = """
An **image set** is a collection of your own pictures, sent to the server and indexed there with the server's
model, as `dinoscope index` indexes a folder: each image's embedding and patch grid are computed once and stored,
and the set becomes a dataset like any other, on every page. The folders inside a `.zip` become the images'
**labels**, which the clustering page compares its clusters with; loose files have none.

**Indexing again** embeds only what is new or changed, so adding a few files to a large set is quick. Files that
cannot be read as images are left out and listed with the reason. One run of a dataset runs at a time.

**Who may do what**: students add sets and change or remove their own, an admin any, a viewer only browses. A
dataset indexed from a folder of the server is indexed again by an admin, and removed on the server.
"""


# Shown beside the clustering's scores: what each one measures, in the words of the badges.
METRIC_TITLES = {
    "silhouette": "How much closer each image is to its own cluster than to the nearest other one: from -1 to 1, "
                  "higher is better.",
    "adjusted Rand vs folders": "How well the clusters agree with the folder labels, counting pairs of images: 1 "
                                "is the same grouping, 0 is what chance gives.",
    "NMI vs folders": "How much knowing an image's cluster tells about its folder label: from 0 (nothing) to 1 "
                      "(everything).",
}
TRUST_TITLE = ("Trustworthiness, from 0 to 1: how far the plot avoids showing images as neighbours that are far apart "
               "in the embedding (1: never). The colours show each image's share of its k nearest neighbours kept.")
METRIC_EXPLANATIONS = """
**Silhouette** (-1 to 1): for each image, how much closer it is to the images of its own cluster than to those of
the nearest other cluster, averaged. Near 1: tight, well separated clusters; near 0: overlapping ones; below 0:
images sit closer to another cluster than to their own. It needs no labels.

**Adjusted Rand index** (ARI, about 0 to 1) compares the clusters with the folder labels: of all pairs of images,
how many are grouped alike (together in both, or apart in both), corrected so that a random clustering scores 0.

**Normalised mutual information** (NMI, 0 to 1): how much knowing an image's cluster tells about its folder, and
the other way round. 1 when clusters and folders match exactly (even with other names), 0 when they are unrelated.

Both label scores leave out images without a folder label, and count DBSCAN's noise as one more group.
"""


def explanation(page: str, text: str) -> dbc.Accordion:
    """A page's explanation (see dashboard.page.Page), folded under "What am I looking at?"."""
    return dbc.Accordion([dbc.AccordionItem(dcc.Markdown(text), title="What am I looking at?",
                                            item_id="explanation")],
                         start_collapsed=True, id=f"{page}-explanation", className="mb-3")
